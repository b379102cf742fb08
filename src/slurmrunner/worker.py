"""The program that runs inside a job: standard library only, Python 3.8+.

It is shipped inside the job script (the runner prepends `_PAYLOAD = '<json>'` to the program
worker_ship.py makes of worker_files.py, worker_spawn.py, worker_records.py and this file),
runs the job's tasks as child processes with at most `parallel` at once, and appends one JSON
line per finished task to the job's results chunk (worker_records.py).

Every file is opened relative to a descriptor of the run folder, never through a symbolic
link, and created exclusively or renamed from a file of the worker's own: nothing planted in
the folder is written through. A result over `max_result_bytes` stays in the task's own file,
and its record says so. A task's args file and log exist while it runs; a task that ends well
leaves them to the next task (worker_files.Reuse), except a log it wrote something to.

The cost per task is that of starting it, plus a few renames and one stat: the worker blocks in
wait4 until a task ends (reaping every task that ended with it), records them with one write,
and starts the next ones at once.

On SIGTERM/SIGINT (scancel, time limit) every unfinished task is recorded as `interrupted`
before the worker exits; the runner turns that into the scheduler's real cause. A requeued job
(SLURM_RESTART_COUNT > 0) runs again only the tasks its earlier attempts did not finish, and
marks every line with its attempt, so the runner lets the new record replace the interrupted one.
"""

import collections
import contextlib
import json
import os
import signal
import sys
import time

# <package> worker_ship.py leaves these lines out: the parts are one module in the job.
from .worker_files import (
    _CREATE,
    _CREATE_RW,
    _DIR,
    Reuse,
    _BadResult,
    _capped,
    _load_result,
    _open_regular,
    _subdir,
    _tail_of,
)
from .worker_records import Results
from .worker_spawn import _memory_cgroup_files, _oom_kills, _signal_name, _spawn

# </package>

STOP_GRACE_S = 5.0  # after SIGTERM, a task has this long to stop before SIGKILL
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# The worker keeps SIGTERM, SIGINT and SIGCHLD blocked and takes them with sigwaitinfo: one call
# per wake-up, and a task is never half launched or half recorded when the job is interrupted.
# Where there is no sigwaitinfo (macOS), it unblocks SIGTERM and SIGINT around a blocking wait4.
_SIGWAIT = hasattr(signal, "sigwaitinfo")


class _Interrupted(Exception):
    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


class _LaunchError(Exception):
    pass


def _on_signal(signum, frame):
    raise _Interrupted(signum)


class Worker(object):
    def __init__(self, payload):
        self.p = payload
        self.run_dir = os.path.abspath(payload["run_dir"])
        self.job = payload["job_index"]
        self.parallel = max(1, int(payload["parallel"]))
        self.pending = collections.deque(payload["tasks"])
        self.indices = set(task["i"] for task in payload["tasks"])
        self.running = {}  # pid -> (task, started, its files: see launch)
        self.done = set()
        try:  # SLURM counts the job's requeues
            self.attempt = max(0, int(os.environ.get("SLURM_RESTART_COUNT") or 0))
        except ValueError:
            self.attempt = 0
        self.cgroup_files = _memory_cgroup_files()
        self.oom_seen = _oom_kills(self.cgroup_files)
        self.max_result = int(payload.get("max_result_bytes") or DEFAULT_MAX_RESULT_BYTES)
        # The runner made the run folder fresh, private and not a link; hold it open and
        # open everything in it by name from here, never following a link.
        self.run_fd = os.open(self.run_dir, _DIR)
        self.fds = {}
        for sub in ("logs", "tasks", "results"):
            # Jobs of one run start together: another worker may create it first.
            self.fds[sub] = _subdir(self.run_fd, sub)
        # Results go to numbered chunks of at most `chunk_records` records or `chunk_bytes`
        # bytes, so the reader re-reads at most one or two small files per look however long
        # the job. A requeued job goes on appending to the last chunk, counting what is there.
        stem = os.path.basename(payload["results"])[: -len(".jsonl")]  # results/K.jsonl
        self.results = Results(
            self.fds["results"],
            stem,
            self.job,
            payload.get("chunk_records"),
            payload.get("chunk_bytes"),
        )
        self.results.count_earlier(self.indices, self.done)
        self.pending = collections.deque(t for t in self.pending if t["i"] not in self.done)
        self.results.open_chunk()
        # An earlier attempt's (or an earlier job's) --out-json is not this one's result: the
        # names there now, looked up once rather than once per task.
        self.stale = set(n for n in os.listdir(self.fds["tasks"]) if n.endswith(".out.json"))
        self.args_files = Reuse(self.fds["tasks"], _CREATE)
        self.logs = Reuse(self.fds["logs"], _CREATE_RW)  # read back for the log's tail
        self.tasks_dir = os.path.join(self.run_dir, "tasks", "")
        self.logs_dir = os.path.join(self.run_dir, "logs", "")
        self.command = list(payload["command"])
        self.call = payload.get("call", "fractal")
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.env = dict(os.environ)
        # Every task of a job shares one working directory, and posix_spawn cannot change it
        # in the child: enter it once here (paths above are absolute, so nothing else moves).
        self.workdir = payload.get("workdir") or self.run_dir
        self.workdir_error = None
        try:
            if payload.get("workdir"):
                os.chdir(self.workdir)
            else:
                os.fchdir(self.run_fd)
        except OSError as exc:
            self.workdir_error = exc

    def launch(self, task):
        i = task["i"]
        args, out = "%d.args.json" % i, "%d.out.json" % i
        args_path, out_path = self.tasks_dir + args, self.tasks_dir + out
        data = json.dumps(task["args"]).encode("utf-8")
        argsfd, args_id, size = self.args_files.take(args)
        try:
            os.pwrite(argsfd, data, 0)
            if size > len(data):  # (no truncation to 0 first: it may cost a flush on ext4)
                os.ftruncate(argsfd, len(data))
        except OSError:
            os.close(argsfd)
            raise
        if out in self.stale:
            self.stale.discard(out)
            with contextlib.suppress(OSError):
                os.unlink(out, dir_fd=self.fds["tasks"])
        cmd = self.command
        if self.call == "fractal":
            cmd = [*cmd, "--args-json", args_path, "--out-json", out_path]
        env = dict(
            self.env,
            SLURMRUNNER_TASK_INDEX=str(i),
            SLURMRUNNER_ARGS_JSON=args_path,
            SLURMRUNNER_OUT_JSON=out_path,
        )
        logfd, log_id, _ = self.logs.take("%d.log" % i)
        files = (argsfd, args_id, len(data), logfd, log_id)
        started = time.time()
        try:
            if self.workdir_error is not None:
                raise _LaunchError(
                    "cannot enter the working directory %r: %s"
                    % (self.workdir, self.workdir_error.strerror)
                )
            if self.call == "stdin":
                stdin = os.open(args, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.fds["tasks"])
                try:
                    pid = _spawn(cmd, stdin, logfd, env)
                finally:
                    os.close(stdin)
            else:
                pid = _spawn(cmd, self.devnull, logfd, env)
        except (OSError, _LaunchError) as exc:
            if isinstance(exc, OSError):
                message = "cannot start %r: %s" % (cmd[0], exc.strerror)
            else:
                message = str(exc)
            os.write(logfd, (message + "\n").encode())
            ended = time.time()
            self.finish(
                task, started, ended, False, 127, None, None, files, "launch_error", message
            )
            return
        self.running[pid] = (task, started, files)

    def finish(
        self, task, started, ended, ran, exit_code, sig, rusage, files, cause=None, message=None
    ):
        """Record a task's end (queued: see main) and give its files back or keep them."""
        i = task["i"]
        record = {
            "i": i,
            "job": self.job,
            "attempt": self.attempt,
            "status": "ok",
            "exit_code": exit_code,
            "signal": sig,
            "duration_s": round(ended - started, 3),
            "max_rss_mb": round(rusage.ru_maxrss / 1024.0, 1) if rusage else None,
            # the run's timeline draws the task from t_end - duration_s to t_end
            "t_end": round(ended, 3),
            "log": self.logs_dir + "%d.log" % i,
        }
        if cause is None and sig is not None:
            cause = "signal"
            message = "killed by %s (signal %d)" % (_signal_name(sig), sig)
            if sig == signal.SIGKILL:
                now = _oom_kills(self.cgroup_files)
                if now > self.oom_seen:
                    cause, message = "out_of_memory", "killed by the OOM killer (SIGKILL)"
                self.oom_seen = now
        elif cause is None and exit_code != 0:
            cause, message = "exit_code", "exited with status %d" % exit_code
        result = None
        if cause is None and ran:
            out = "%d.out.json" % i
            try:
                result = _load_result(self.fds["tasks"], out, self.tasks_dir + out, self.max_result)
            except _BadResult as exc:
                cause, message = exc.cause, str(exc)
        argsfd, args_id, args_size, logfd, log_id = files
        if cause is None:
            record["result"] = result
            # Its input is in the run's store, and a log it wrote nothing to says nothing:
            # both go to the next task.
            self.args_files.give(argsfd, "%d.args.json" % i, args_id, args_size)
            if os.fstat(logfd).st_size == 0:
                self.logs.give(logfd, "%d.log" % i, log_id, 0)
            else:
                os.close(logfd)
        else:
            record["status"] = "failed"
            record["error"] = {
                "cause": cause,
                "message": _capped(message),
                "log_tail": _tail_of(logfd),
            }
            os.close(argsfd)  # what a failed task had stays, to look into
            os.close(logfd)
        self.results.add(record, bool(self.pending or self.running))
        self.done.add(i)

    def reap(self):
        """Wait for a task to end; record it and every other task that has ended too."""
        ended = []
        while not ended:
            if _SIGWAIT:
                # a SIGCHLD left pending by a task reaped already only costs one more look
                signum = signal.sigwaitinfo(_SIGNALS | {signal.SIGCHLD}).si_signo
                if signum != signal.SIGCHLD:
                    raise _Interrupted(signum)
            else:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                try:
                    ended.append(os.wait4(-1, 0))
                finally:
                    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            while len(ended) < len(self.running):
                got = os.wait4(-1, os.WNOHANG)
                if not got[0]:
                    break
                ended.append(got)
        now = time.time()
        for pid, status, rusage in ended:
            entry = self.running.pop(pid, None)
            if entry is None:
                continue
            task, started, files = entry
            if os.WIFSIGNALED(status):
                code, sig = None, os.WTERMSIG(status)
            else:
                code, sig = os.WEXITSTATUS(status), None
            self.finish(task, started, now, True, code, sig, rusage, files)

    def interrupt(self, signum):
        self.results.flush()
        for pid in list(self.running):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
        name = _signal_name(signum)
        for task in [e[0] for e in self.running.values()] + list(self.pending):
            if task["i"] in self.done:
                continue
            record = {
                "i": task["i"],
                "job": self.job,
                "attempt": self.attempt,
                "status": "interrupted",
                "signal": signum,
                "error": {"cause": "interrupted", "message": "job received " + name},
            }
            self.results.add(record, True)
        self.results.emit(self.results.end_line(time.time(), interrupted=name))
        self.stop_children(STOP_GRACE_S)

    def stop_children(self, grace_s):
        """Reap the tasks told to stop; SIGKILL the groups of those still there after grace_s,
        so no task outlives its worker (the local backend has no cgroup to clean up). Waits
        for SIGCHLD (blocked since the start, so none is missed), not in steps."""
        deadline = time.monotonic() + grace_s
        while self.running:
            for pid in list(self.running):
                try:
                    reaped, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    reaped = pid
                if reaped:
                    del self.running[pid]
            left = deadline - time.monotonic()
            if self.running and left <= 0:
                for pid in list(self.running):
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                    del self.running[pid]
            elif self.running and _SIGWAIT:
                signal.sigtimedwait([signal.SIGCHLD], left)
            elif self.running:
                time.sleep(min(left, 0.02))

    def main(self):
        # slurmstepd creates the job's output file with the submitter's umask (sshd's 022):
        # the run folder is private already, but leave nothing group- or world-readable.
        self._private_output()
        start = {
            "event": "start",
            "t": time.time(),
            "job": self.job,
            "attempt": self.attempt,
            "host": os.uname()[1],
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "n_tasks": len(self.pending),
        }
        self.results.emit(start)
        try:
            while self.pending or self.running:
                while self.pending and len(self.running) < self.parallel:
                    self.launch(self.pending.popleft())
                # the records of the tasks reaped last (and of any that could not start),
                # written once their successors run
                self.results.flush()
                if self.running:
                    self.reap()
        except _Interrupted as exc:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.interrupt(exc.signum)
            return 128 + exc.signum
        self.results.emit(self.results.end_line(time.time()))
        return 0

    def _private_output(self):
        output = self.p.get("output") or ""
        rel = os.path.relpath(output, self.run_dir).split(os.sep) if output else []
        if len(rel) != 2 or rel[0] == "..":
            return  # the job's output is always <run_dir>/jobs/K.out
        try:
            jobs = os.open(rel[0], _DIR, dir_fd=self.run_fd)
            try:
                fd, _ = _open_regular(jobs, rel[1])
                os.fchmod(fd, 0o600)
                os.close(fd)
            finally:
                os.close(jobs)
        except OSError:
            pass


def main(payload):
    # Blocked for good (tasks start with an empty mask, see worker_spawn.py); SIGCHLD's default
    # action, so that ended tasks wait to be reaped even if the job was started with it ignored.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS | {signal.SIGCHLD})
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return Worker(payload).main()


if __name__ == "__main__":
    _data = globals().get("_PAYLOAD")
    if _data is None:
        with open(sys.argv[1]) as _fh:
            _data = _fh.read()
    sys.exit(main(json.loads(_data)))
