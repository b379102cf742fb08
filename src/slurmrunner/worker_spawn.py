"""How the worker starts a task, and how it tells an OOM kill from another SIGKILL.

Part of the worker program (worker_ship.py joins the parts): standard library only, Python 3.8+.

Tasks start through os.posix_spawn where the platform can put them in a new session (vfork +
exec in libc: no copy of the interpreter, no Python code in the child), else through fork +
exec. Either way a task gets its own session and process group (stopped as a whole), default
SIGTERM/SIGINT handling, an empty signal mask, and only stdin, stdout and stderr of the
worker's files. The worker reaps it with wait4, for its peak memory.
"""

import os
import signal

_POSIX_SPAWN = hasattr(os, "posix_spawn")


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _memory_cgroup_files():
    """The OOM counters of this process's memory cgroup and its parents (v1 or v2)."""
    files = []
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return files
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2]
        if "memory" in controllers.split(","):
            base, name = "/sys/fs/cgroup/memory", "memory.oom_control"
        elif controllers == "":
            base, name = "/sys/fs/cgroup", "memory.events"
        else:
            continue
        while path not in ("", "/"):
            candidate = base + path + "/" + name
            if os.path.exists(candidate):
                files.append(candidate)
            path = os.path.dirname(path)
    return files


def _oom_kills(files):
    total = 0
    for name in files:
        try:
            with open(name) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        total += int(value)
        except (OSError, ValueError):
            pass
    return total


def _spawn(cmd, stdin, out, env):
    """Start `cmd` with `stdin` as its standard input and `out` as its output and error: its
    pid, or OSError (the program cannot be run)."""
    global _POSIX_SPAWN
    if _POSIX_SPAWN:
        # Exec errors still raise OSError here.
        spawn = os.posix_spawn if "/" in cmd[0] else os.posix_spawnp
        try:
            return spawn(
                cmd[0],
                cmd,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, stdin, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, out, 2),
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=(signal.SIGTERM, signal.SIGINT),
            )
        except NotImplementedError:  # a libc without POSIX_SPAWN_SETSID
            _POSIX_SPAWN = False
    return _fork_exec(cmd, stdin, out, env)


def _fork_exec(cmd, stdin, out, env):
    errpipe_r, errpipe_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(errpipe_r)
            os.setsid()
            os.dup2(stdin, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.set_inheritable(errpipe_w, False)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execvpe(cmd[0], cmd, env)
        except OSError as exc:
            os.write(errpipe_w, str(exc.errno).encode())
        finally:
            os._exit(127)
    os.close(errpipe_w)
    err = os.read(errpipe_r, 64)
    os.close(errpipe_r)
    if err:
        os.waitpid(pid, 0)
        errno_ = int(err)
        raise OSError(errno_, os.strerror(errno_))
    return pid
