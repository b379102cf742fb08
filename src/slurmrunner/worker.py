"""The program that runs inside a job: standard library only, Python 3.8+.

It is shipped inside the job script (the runner prepends `_PAYLOAD = '<json>'`), runs the job's
tasks as child processes with at most `parallel` at once, and appends one JSON line per
finished task to the job's results file. A `start` line opens the file and an `end` line closes
it, so the reader knows a job is complete without asking the scheduler.

On SIGTERM/SIGINT (scancel, time limit) every unfinished task is recorded as `interrupted`
before the worker exits; the runner turns that into the scheduler's real cause.
"""

import collections
import contextlib
import json
import os
import signal
import sys
import time

LOG_TAIL_BYTES = 2048
STOP_GRACE_S = 5.0  # after SIGTERM, a task has this long to stop before SIGKILL
_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Tasks start through os.posix_spawn where the platform can put them in a new session, else
# through fork + exec (the worker reaps with wait4 either way, for each task's peak memory).
_POSIX_SPAWN = hasattr(os, "posix_spawn")


class _Interrupted(Exception):
    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


class _LaunchError(Exception):
    pass


def _on_signal(signum, frame):
    raise _Interrupted(signum)


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


def _log_tail(path):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if size > LOG_TAIL_BYTES and "\n" in text:
        text = text.split("\n", 1)[1]
    return text


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


class Worker(object):
    def __init__(self, payload):
        self.p = payload
        self.run_dir = os.path.abspath(payload["run_dir"])
        self.job = payload["job_index"]
        self.parallel = max(1, int(payload["parallel"]))
        self.pending = collections.deque(payload["tasks"])
        self.running = {}  # pid -> (task, started, log path, out path)
        self.done = set()
        self.cgroup_files = _memory_cgroup_files()
        self.oom_seen = _oom_kills(self.cgroup_files)
        for sub in ("logs", "tasks", "results"):
            # Jobs of one run start together: another worker may create it first.
            os.makedirs(os.path.join(self.run_dir, sub), 0o700, exist_ok=True)
        # Results go to numbered chunks of `chunk_records` task records, so the reader re-reads
        # at most one or two small files per look however long the job. A requeued job goes
        # on appending to the last chunk.
        self.results = os.path.join(self.run_dir, payload["results"])
        self.chunk_records = max(1, int(payload.get("chunk_records") or 1000))
        self.chunk = 0
        while os.path.exists(self.chunk_path(self.chunk + 1)):
            self.chunk += 1
        self.in_chunk = 0
        self.out = self.open_chunk()
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.env = dict(os.environ)
        # Every task of a job shares one working directory, and posix_spawn cannot change it
        # in the child: enter it once here (paths above are absolute, so nothing else moves).
        self.workdir = payload.get("workdir") or self.run_dir
        self.workdir_error = None
        try:
            os.chdir(self.workdir)
        except OSError as exc:
            self.workdir_error = exc

    def chunk_path(self, chunk):
        if chunk == 0:
            return self.results
        stem = self.results[: -len(".jsonl")] if self.results.endswith(".jsonl") else self.results
        return "%s.%d.jsonl" % (stem, chunk)

    def open_chunk(self):
        return os.open(self.chunk_path(self.chunk), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def emit(self, record):
        os.write(self.out, (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
        if "i" not in record:
            return
        self.in_chunk += 1
        if self.in_chunk >= self.chunk_records and (self.pending or self.running):
            # the reader moves on when it sees this line; it never needs this file again
            self.emit({"event": "next", "job": self.job, "chunk": self.chunk + 1})
            os.close(self.out)
            self.chunk += 1
            self.in_chunk = 0
            self.out = self.open_chunk()

    def launch(self, task):
        i = task["i"]
        log = os.path.join(self.run_dir, "logs", "%d.log" % i)
        args = os.path.join(self.run_dir, "tasks", "%d.args.json" % i)
        out = os.path.join(self.run_dir, "tasks", "%d.out.json" % i)
        fd = os.open(args, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(task["args"]).encode("utf-8"))
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
        cmd = list(self.p["command"])
        if self.p.get("call", "fractal") == "fractal":
            cmd += ["--args-json", args, "--out-json", out]
        env = dict(
            self.env,
            SLURMRUNNER_TASK_INDEX=str(i),
            SLURMRUNNER_ARGS_JSON=args,
            SLURMRUNNER_OUT_JSON=out,
        )
        logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        started = time.time()
        try:
            if self.workdir_error is not None:
                raise _LaunchError(
                    "cannot enter the working directory %r: %s"
                    % (self.workdir, self.workdir_error.strerror)
                )
            if self.p.get("call") == "stdin":
                stdin = os.open(args, os.O_RDONLY)
                try:
                    pid = self._spawn(cmd, stdin, logfd, env)
                finally:
                    os.close(stdin)
            else:
                pid = self._spawn(cmd, self.devnull, logfd, env)
        except (OSError, _LaunchError) as exc:
            if isinstance(exc, OSError):
                message = "cannot start %r: %s" % (cmd[0], exc.strerror)
            else:
                message = str(exc)
            os.write(logfd, (message + "\n").encode())
            os.close(logfd)
            self.finish(task, started, log, None, 127, None, None, "launch_error", message)
            return
        os.close(logfd)
        self.running[pid] = (task, started, log, out)

    def _spawn(self, cmd, stdin, logfd, env):
        global _POSIX_SPAWN
        if _POSIX_SPAWN:
            # vfork + exec in libc: no copy of the interpreter and no Python code in the child,
            # which halves the cost of a short task. Exec errors still raise OSError here.
            spawn = os.posix_spawn if "/" in cmd[0] else os.posix_spawnp
            try:
                return spawn(
                    cmd[0],
                    cmd,
                    env,
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, stdin, 0),
                        (os.POSIX_SPAWN_DUP2, logfd, 1),
                        (os.POSIX_SPAWN_DUP2, logfd, 2),
                    ],
                    setsid=True,
                    setsigmask=(),
                    setsigdef=(signal.SIGTERM, signal.SIGINT),
                )
            except NotImplementedError:  # a libc without POSIX_SPAWN_SETSID
                _POSIX_SPAWN = False
        return self._fork_exec(cmd, stdin, logfd, env)

    def _fork_exec(self, cmd, stdin, logfd, env):
        errpipe_r, errpipe_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(errpipe_r)
                os.setsid()
                os.dup2(stdin, 0)
                os.dup2(logfd, 1)
                os.dup2(logfd, 2)
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

    def finish(self, task, started, log, out, exit_code, sig, rusage, cause=None, message=None):
        i = task["i"]
        record = {
            "i": i,
            "job": self.job,
            "status": "ok",
            "exit_code": exit_code,
            "signal": sig,
            "duration_s": round(time.time() - started, 3),
            "max_rss_mb": round(rusage.ru_maxrss / 1024.0, 1) if rusage else None,
            "log": log,
        }
        if cause is None and sig is not None:
            cause = "signal"
            message = "killed by %s" % _signal_name(sig)
            if sig == signal.SIGKILL:
                now = _oom_kills(self.cgroup_files)
                if now > self.oom_seen:
                    cause, message = "out_of_memory", "killed by the OOM killer (SIGKILL)"
                self.oom_seen = now
        elif cause is None and exit_code != 0:
            cause, message = "exit_code", "exited with status %d" % exit_code
        result = None
        if cause is None and out and os.path.exists(out):
            try:
                with open(out) as fh:
                    result = json.load(fh)
            except (OSError, ValueError) as exc:
                cause, message = "bad_output", "--out-json is not valid JSON: %s" % exc
        if cause is None:
            record["result"] = result
        else:
            record["status"] = "failed"
            record["error"] = {"cause": cause, "message": message, "log_tail": _log_tail(log)}
        self.emit(record)
        self.done.add(i)

    def reap_one(self):
        # Signals are blocked everywhere but here, so a task is never half launched or half
        # recorded when the job is interrupted.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        try:
            pid, status, rusage = os.wait4(-1, 0)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        entry = self.running.pop(pid, None)
        if entry is None:
            return
        task, started, log, out = entry
        if os.WIFSIGNALED(status):
            self.finish(task, started, log, out, None, os.WTERMSIG(status), rusage)
        else:
            self.finish(task, started, log, out, os.WEXITSTATUS(status), None, rusage)

    def interrupt(self, signum):
        for pid in list(self.running):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
        name = _signal_name(signum)
        for task in [e[0] for e in self.running.values()] + list(self.pending):
            if task["i"] in self.done:
                continue
            self.emit(
                {
                    "i": task["i"],
                    "job": self.job,
                    "status": "interrupted",
                    "signal": signum,
                    "error": {"cause": "interrupted", "message": "job received " + name},
                }
            )
        self.emit({"event": "end", "job": self.job, "interrupted": name, "t": time.time()})
        self.stop_children(STOP_GRACE_S)

    def stop_children(self, grace_s):
        """Reap the tasks told to stop; SIGKILL the groups of those still there after grace_s,
        so no task outlives its worker (the local backend has no cgroup to clean up)."""
        deadline = time.time() + grace_s
        while self.running:
            for pid in list(self.running):
                try:
                    reaped, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    reaped = pid
                if reaped:
                    del self.running[pid]
            if self.running and time.time() >= deadline:
                for pid in list(self.running):
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                    del self.running[pid]
            elif self.running:
                time.sleep(0.05)

    def main(self):
        # slurmstepd creates the job's output file with the submitter's umask (sshd's 022):
        # the run folder is private already, but leave nothing group- or world-readable.
        if self.p.get("output") and os.path.exists(self.p["output"]):
            os.chmod(self.p["output"], 0o600)
        self.emit(
            {
                "event": "start",
                "t": time.time(),
                "job": self.job,
                "host": os.uname()[1],
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "n_tasks": len(self.pending),
            }
        )
        try:
            while self.pending or self.running:
                while self.pending and len(self.running) < self.parallel:
                    self.launch(self.pending.popleft())
                if self.running:
                    self.reap_one()
        except _Interrupted as exc:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.interrupt(exc.signum)
            return 128 + exc.signum
        self.emit({"event": "end", "job": self.job, "t": time.time()})
        return 0


def main(payload):
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return Worker(payload).main()


if __name__ == "__main__":
    _data = globals().get("_PAYLOAD")
    if _data is None:
        with open(sys.argv[1]) as _fh:
            _data = _fh.read()
    sys.exit(main(json.loads(_data)))
