# shellcheck shell=bash
# shellcheck source-path=SCRIPTDIR
# Helpers shared by scripts/cluster-up and scripts/cluster-down (sourced, not executed).

RIG_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=rig.env
. "$RIG_SCRIPTS_DIR/rig.env"

# Never pick up tools from the caller's environment (e.g. root's pyenv shims).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

RIG_PROG=$(basename "$0")
log() { printf '[%s] %s\n' "$RIG_PROG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$RIG_PROG" "$*" >&2; exit 1; }

require_root() { [[ $EUID -eq 0 ]] || die "must run as root"; }

# Serialize cluster-up/cluster-down runs (tests may call them concurrently). The lock is
# held on fd 9 until the script exits.
rig_lock() {
    mkdir -p "$RIG_RUN_DIR"
    exec 9>"$RIG_RUN_DIR/rig.lock"
    flock -w 120 9 || die "another cluster-up/cluster-down holds $RIG_RUN_DIR/rig.lock"
}

# The daemons of the rig: name -> pid file, and the process name (/proc/PID/comm) that
# a live pid in that file must have (guards against a recycled pid).
declare -A RIG_PIDFILE=(
    [munged]=$RIG_MUNGED_PIDFILE
    [slurmctld]=$RIG_SLURMCTLD_PIDFILE
    [slurmd]=$RIG_SLURMD_PIDFILE
    [sshd]=$RIG_SSHD_PIDFILE
    [slurmdbd]=$RIG_SLURMDBD_PIDFILE
    [mariadbd]=$RIG_MARIADB_PIDFILE
)

# True if PID is a live process: it exists and one of its threads is not a zombie. (The
# leader of a multithreaded daemon shows as a zombie while its other threads shut down;
# and an exited daemon can stay a zombie for long where pid 1 does not reap orphans.)
pid_alive() {
    local t state
    for t in /proc/"$1"/task/*/stat; do
        state=$(awk '{print $3}' "$t" 2>/dev/null) || continue
        [[ -n $state && $state != Z ]] && return 0
    done
    return 1
}

# Print the pid of the rig's daemon NAME if its pid file names a live process of that
# name; fail otherwise.
daemon_pid() {
    local name=$1 file=${RIG_PIDFILE[$1]} pid comm
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    pid=${pid//[[:space:]]/}
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] && pid_alive "$pid" || return 1
    printf '%s\n' "$pid"
}

# Stop the rig's daemon NAME: TERM, wait up to TIMEOUT s, then KILL. Removes its pid file.
# Only the pid written in the rig's own pid file is ever signalled.
stop_daemon() {
    local name=$1 timeout=${2:-30} file=${RIG_PIDFILE[$1]} pid i
    if ! pid=$(daemon_pid "$name"); then
        [[ -e $file ]] && log "$name: stale pid file $file removed"
        rm -f "$file"
        return 0
    fi
    log "$name: stopping pid $pid (TERM)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "$name: pid $pid still alive after ${timeout}s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do   # up to 10 s: gone, not "probably gone"
            pid_alive "$pid" || break
            sleep 0.1
        done
        pid_alive "$pid" && die "$name: pid $pid survived KILL for 10 s"
    fi
    rm -f "$file"
}

# True once something at HOST:PORT accepts a TCP connection and greets with an SSH banner.
ssh_banner_ok() {
    timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -c 4 <&3' _ "$1" "$2" 2>/dev/null \
        | grep -qx 'SSH-'
}
