# shellcheck shell=bash
# Helpers shared by scripts/cluster-up and scripts/cluster-down (sourced, not executed).

RIG_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/rig.env
. "$RIG_SCRIPTS_DIR/rig.env"

# Never pick up tools from the caller's environment (e.g. root's pyenv shims).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

RIG_PROG=$(basename "$0")
log() { printf '[%s] %s\n' "$RIG_PROG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$RIG_PROG" "$*" >&2; exit 1; }

require_root() { [[ $EUID -eq 0 ]] || die "must run as root"; }

# The daemons of the rig: name -> pid file, and the process name (/proc/PID/comm) that
# a live pid in that file must have (guards against a recycled pid).
declare -A RIG_PIDFILE=(
    [munged]=$RIG_MUNGED_PIDFILE
    [slurmctld]=$RIG_SLURMCTLD_PIDFILE
    [slurmd]=$RIG_SLURMD_PIDFILE
    [sshd]=$RIG_SSHD_PIDFILE
)

# Print the pid of the rig's daemon NAME if its pid file names a live process of that
# name; fail otherwise.
daemon_pid() {
    local name=$1 file=${RIG_PIDFILE[$1]} pid comm
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    pid=${pid//[[:space:]]/}
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] || return 1
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
        [[ -d /proc/$pid ]] || break
        # A zombie is dead already (its parent just has not reaped it yet).
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
        log "$name: pid $pid still alive after ${timeout}s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$file"
}
