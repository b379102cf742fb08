"""The program that runs inside a job: standard library only, Python 3.8+.

It is shipped inside the job script (the runner prepends `_PAYLOAD = '<json>'`), runs the job's
tasks as child processes with at most `parallel` at once, and appends one JSON line per
finished task to the job's results chunk (records.py has the lines and the rules the server
reads them by). A `start` line opens the first chunk, a `next` line closes each full one (full:
`chunk_records` records or `chunk_bytes` bytes) and an `end` line closes the last, both with
their counts, so the reader knows a job is complete without asking the scheduler.

Every file is opened relative to a descriptor of the run folder, never through a symbolic
link, and created exclusively: nothing planted in the folder is written through. A result over
`max_result_bytes` stays in the task's own file, and its record says so.

On SIGTERM/SIGINT (scancel, time limit) every unfinished task is recorded as `interrupted`
before the worker exits; the runner turns that into the scheduler's real cause. A requeued job
(SLURM_RESTART_COUNT > 0) runs again only the tasks its earlier attempts did not finish, and
marks every line with its attempt, so the runner lets the new record replace the interrupted one.
"""

import binascii
import collections
import contextlib
import json
import math
import os
import signal
import stat
import sys
import time

LOG_TAIL_BYTES = 2048
STOP_GRACE_S = 5.0  # after SIGTERM, a task has this long to stop before SIGKILL
MAX_MESSAGE = 4000  # records.MAX_TEXT allows 4096 characters
RESULT_MAX_DEPTH = 60  # records.MAX_DEPTH (64) counts the record around the result too
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
SEPARATOR = "sep"  # in results/: chunks.SEPARATOR_RELPATH
_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a FIFO cannot block us
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
# Tasks start through os.posix_spawn where the platform can put them in a new session, else
# through fork + exec (the worker reaps with wait4 either way, for each task's peak memory).
_POSIX_SPAWN = hasattr(os, "posix_spawn")


class _Interrupted(Exception):
    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


class _LaunchError(Exception):
    pass


class _BadResult(Exception):
    def __init__(self, cause, message):
        Exception.__init__(self, message)
        self.cause = cause


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


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


def _capped(text):
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _subdir(parent_fd, name):
    """A folder in the run folder, made if missing; refused if it is a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    return os.open(name, _DIR, dir_fd=parent_fd)


def _create(dir_fd, name):
    """A new private file: whatever had its name (an earlier attempt's, a link) goes first."""
    try:
        return os.open(name, _CREATE, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(name, dir_fd=dir_fd)
        return os.open(name, _CREATE, 0o600, dir_fd=dir_fd)


def _open_regular(dir_fd, name):
    """A file to read, or OSError: never through a link, never a FIFO or a device."""
    fd = os.open(name, _READ, dir_fd=dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    return fd, st.st_size


def _read_all(fd, limit):
    parts, size = [], 0
    while size <= limit:
        data = os.read(fd, 1 << 20)
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


def _log_tail(dir_fd, name):
    try:
        fd, size = _open_regular(dir_fd, name)
    except OSError:
        return ""
    try:
        os.lseek(fd, max(0, size - LOG_TAIL_BYTES), os.SEEK_SET)
        data = os.read(fd, LOG_TAIL_BYTES)
    except OSError:
        return ""
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace")
    if size > LOG_TAIL_BYTES and "\n" in text:
        text = text.split("\n", 1)[1]
    return text


def _finite(text):
    value = float(text)
    if math.isinf(value) or math.isnan(value):
        raise ValueError("number %s is not finite" % text[:20])
    return value


def _no_constant(name):
    raise ValueError("%s is not a number" % name)


def _depth(value):
    """How deep JSON data nests (walked without recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in item)
    return deepest


def _load_result(dir_fd, name, path, limit):
    """A task's --out-json (None when it wrote none), or _BadResult."""
    try:
        fd, size = _open_regular(dir_fd, name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _BadResult("bad_output", "cannot read --out-json: %s" % exc) from None
    try:
        data = b"" if size > limit else _read_all(fd, limit)
    finally:
        os.close(fd)
    try:
        value = None
        if max(size, len(data)) <= limit:
            value = json.loads(data, parse_float=_finite, parse_constant=_no_constant)
            size = len(json.dumps(value, separators=(",", ":")))  # as it travels, escaped
    except (ValueError, RecursionError) as exc:
        raise _BadResult("bad_output", "--out-json is not valid JSON: %s" % exc) from None
    if max(size, len(data)) > limit:
        message = "the result is %d bytes, over max_result_bytes=%d: it stays in %s"
        raise _BadResult("result_too_large", message % (max(size, len(data)), limit, path))
    if _depth(value) > RESULT_MAX_DEPTH:
        raise _BadResult("bad_output", "--out-json nests deeper than %d" % RESULT_MAX_DEPTH)
    return value


def _count_records(data, job, indices, done):
    """Lines of `data` the server counts as this job's task records (for a requeued job); the
    tasks they finished go to `done` (not those interrupted or killed by a signal: the
    scheduler's stop may have been what killed them, so they run again)."""
    n = 0
    for line in data.decode("utf-8", "replace").split("\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(rec, dict)
            and "event" not in rec
            and type(rec.get("job")) is int
            and rec["job"] == job
            and type(rec.get("i")) is int
            and rec["i"] in indices
            and rec.get("status") in ("ok", "failed", "interrupted")
        ):
            n += 1
            error = rec.get("error")
            cause = error.get("cause") if isinstance(error, dict) else None
            if rec["status"] == "ok" or cause not in (None, "signal", "interrupted"):
                done.add(rec["i"])
    return n


class Worker(object):
    def __init__(self, payload):
        self.p = payload
        self.run_dir = os.path.abspath(payload["run_dir"])
        self.job = payload["job_index"]
        self.parallel = max(1, int(payload["parallel"]))
        self.pending = collections.deque(payload["tasks"])
        self.indices = set(task["i"] for task in payload["tasks"])
        self.running = {}  # pid -> (task, started)
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
        results = payload["results"]  # results/K.jsonl
        self.stem = os.path.basename(results)[: -len(".jsonl")]
        self.chunk_records = max(1, int(payload.get("chunk_records") or 1000))
        self.chunk_bytes = max(1, int(payload.get("chunk_bytes") or DEFAULT_CHUNK_BYTES))
        self._write_separator()
        self.chunk = 0
        while self._exists(self.chunk_name(self.chunk + 1)):
            self.chunk += 1
        self.in_chunk, self.total = self._count_earlier_records()
        self.pending = collections.deque(t for t in self.pending if t["i"] not in self.done)
        self.out = self.out_size = None
        self.open_chunk()
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

    def _exists(self, name):
        try:
            os.stat(name, dir_fd=self.fds["results"], follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _write_separator(self):
        """The line the reader cuts its `cat` output with: random, so no task output can
        pass for it. Written aside and linked into place, so it is never seen half written."""
        results = self.fds["results"]
        if self._exists(SEPARATOR):
            return
        token = binascii.hexlify(os.urandom(16)).decode()
        tmp = "%s.%s" % (SEPARATOR, token)
        fd = os.open(tmp, _CREATE, 0o600, dir_fd=results)
        try:
            os.write(fd, ("SLURMRUNNER-SEPARATOR-%s\n" % token).encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, SEPARATOR, src_dir_fd=results, dst_dir_fd=results)
        except FileExistsError:
            pass  # another job of the run was first
        finally:
            os.unlink(tmp, dir_fd=results)

    def chunk_name(self, chunk):
        return "%s.jsonl" % self.stem if chunk == 0 else "%s.%d.jsonl" % (self.stem, chunk)

    def _count_earlier_records(self):
        """Task records already in this job's chunks (a requeued job): (last chunk, all)."""
        counts = []
        for chunk in range(self.chunk + 1):
            try:
                fd, _ = _open_regular(self.fds["results"], self.chunk_name(chunk))
            except OSError:
                counts.append(0)
                continue
            with contextlib.closing(os.fdopen(fd, "rb")) as fh:
                counts.append(_count_records(fh.read(), self.job, self.indices, self.done))
        return counts[-1], sum(counts)

    def open_chunk(self):
        # Appended to by this worker only (O_RDWR to look at the last byte, see emit).
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        self.out = os.open(self.chunk_name(self.chunk), flags, 0o600, dir_fd=self.fds["results"])
        st = os.fstat(self.out)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("%s is not a regular file" % self.chunk_name(self.chunk))
        self.out_size = st.st_size

    def emit(self, record):
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        size = os.fstat(self.out).st_size
        if "i" in record and size >= self.chunk_bytes:
            # A task filled the chunk with lines of its own, maybe more than a reader keeps:
            # this record goes to a fresh chunk, which the reader reads before the full one.
            self.next_chunk()
            size = self.out_size
        if size != self.out_size and size and os.pread(self.out, 1, size - 1) != b"\n":
            # A task appended a line of its own and did not end it: end it, or this record
            # would be glued to it and lost with it.
            data = b"\n" + data
        os.write(self.out, data)
        self.out_size = size + len(data)
        if "i" not in record:
            return
        self.in_chunk += 1
        self.total += 1
        full = self.in_chunk >= self.chunk_records or self.out_size >= self.chunk_bytes
        if full and (self.pending or self.running):
            self.next_chunk()

    def next_chunk(self):
        # the reader moves on when it sees this line; it never needs this file again
        line = {"event": "next", "job": self.job, "chunk": self.chunk + 1}
        self.emit(dict(line, records=self.in_chunk))
        os.close(self.out)
        self.chunk += 1
        self.in_chunk = 0
        self.open_chunk()

    def end_line(self, **extra):
        line = {"event": "end", "job": self.job, "chunk": self.chunk, "records": self.in_chunk}
        line.update(tasks=self.total, t=time.time(), **extra)
        return line

    def launch(self, task):
        i = task["i"]
        tasks_fd = self.fds["tasks"]
        log, args, out = "%d.log" % i, "%d.args.json" % i, "%d.out.json" % i
        args_path = os.path.join(self.run_dir, "tasks", args)
        out_path = os.path.join(self.run_dir, "tasks", out)
        fd = _create(tasks_fd, args)
        try:
            os.write(fd, json.dumps(task["args"]).encode("utf-8"))
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # an earlier attempt's result is not this one's
            os.unlink(out, dir_fd=tasks_fd)
        cmd = list(self.p["command"])
        if self.p.get("call", "fractal") == "fractal":
            cmd += ["--args-json", args_path, "--out-json", out_path]
        env = dict(
            self.env,
            SLURMRUNNER_TASK_INDEX=str(i),
            SLURMRUNNER_ARGS_JSON=args_path,
            SLURMRUNNER_OUT_JSON=out_path,
        )
        logfd = _create(self.fds["logs"], log)
        started = time.time()
        try:
            if self.workdir_error is not None:
                raise _LaunchError(
                    "cannot enter the working directory %r: %s"
                    % (self.workdir, self.workdir_error.strerror)
                )
            if self.p.get("call") == "stdin":
                stdin = os.open(args, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=tasks_fd)
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
            self.finish(task, started, False, 127, None, None, "launch_error", message)
            return
        os.close(logfd)
        self.running[pid] = (task, started)

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

    def finish(self, task, started, ran, exit_code, sig, rusage, cause=None, message=None):
        i = task["i"]
        ended = time.time()
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
            "log": os.path.join(self.run_dir, "logs", "%d.log" % i),
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
            path = os.path.join(self.run_dir, "tasks", out)
            try:
                result = _load_result(self.fds["tasks"], out, path, self.max_result)
            except _BadResult as exc:
                cause, message = exc.cause, str(exc)
        if cause is None:
            record["result"] = result
        else:
            record["status"] = "failed"
            record["error"] = {
                "cause": cause,
                "message": _capped(message),
                "log_tail": _log_tail(self.fds["logs"], "%d.log" % i),
            }
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
        task, started = entry
        if os.WIFSIGNALED(status):
            self.finish(task, started, True, None, os.WTERMSIG(status), rusage)
        else:
            self.finish(task, started, True, os.WEXITSTATUS(status), None, rusage)

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
                    "attempt": self.attempt,
                    "status": "interrupted",
                    "signal": signum,
                    "error": {"cause": "interrupted", "message": "job received " + name},
                }
            )
        self.emit(self.end_line(interrupted=name))
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
        self._private_output()
        self.emit(
            {
                "event": "start",
                "t": time.time(),
                "job": self.job,
                "attempt": self.attempt,
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
        self.emit(self.end_line())
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
