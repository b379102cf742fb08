# shellcheck shell=bash
# shellcheck source-path=SCRIPTDIR
# Helpers shared by scripts/pg-up, scripts/pg-down and scripts/pg-status (sourced, not
# executed). The generic ones (log, die, require_root, pid_alive, a fixed PATH) come from
# rig-lib.sh; the contract of the rig's PostgreSQL is pg.env.

# shellcheck source=rig-lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/rig-lib.sh"
# shellcheck source=pg.env
. "$RIG_SCRIPTS_DIR/pg.env"

# Serialize pg-up/pg-down runs (tests may call them concurrently). Not the SLURM rig's lock:
# the two rigs come up and down independently. Held on fd 9 until the script exits.
pg_lock() {
    mkdir -p "$RIG_PG_SOCKET_DIR"
    exec 9>"$RIG_PG_SOCKET_DIR/pg.lock"
    flock -w 120 9 || die "another pg-up/pg-down holds $RIG_PG_SOCKET_DIR/pg.lock"
}

# The major version of the rig's cluster: the one its data directory was made with, else
# the newest one installed. Prints nothing (and fails) when none is known.
pg_version() {
    local v
    if [[ -r $RIG_PG_DATA_DIR/PG_VERSION ]]; then
        v=$(<"$RIG_PG_DATA_DIR/PG_VERSION")
    else
        v=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
            | awk -F/ '{print $5}' | sort -V | tail -n 1)
    fi
    [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || return 1
    printf '%s\n' "$v"
}

# Print the pid of the rig's postmaster if its pid file (postmaster.pid: pid on line 1, data
# directory on line 2) names a live `postgres` process working in the rig's data directory;
# fail otherwise (no file, stale file, recycled pid, another cluster's postgres).
pg_pid() {
    local pid="" dir="" comm cwd
    [[ -r $RIG_PG_PIDFILE ]] || return 1
    { read -r pid && read -r dir; } <"$RIG_PG_PIDFILE" 2>/dev/null || return 1
    [[ $pid =~ ^[0-9]+$ && $dir == "$RIG_PG_DATA_DIR" ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == postgres ]] && pid_alive "$pid" || return 1
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1   # the postmaster chdirs there
    [[ $cwd == "$RIG_PG_DATA_DIR" ]] || return 1
    printf '%s\n' "$pid"
}

# True once the server accepts connections on the rig's TCP address. BIN: the server's bin dir.
pg_ready() {
    "$1/pg_isready" -q -h "$RIG_PG_HOST" -p "$RIG_PG_PORT" -t 2 >/dev/null 2>&1
}
