"""The worker's results: one JSON line per finished task, appended to the job's results chunk.

Part of the worker program (worker_ship.py joins the parts): standard library only, Python 3.8+.
records.py has the lines and the rules the server reads them by; keep both in step.

A `start` line opens the first chunk, a `next` line closes each full one (full: `chunk_records`
records or `chunk_bytes` bytes) and an `end` line closes the last, both with their counts, so
the reader knows a job is complete without asking the scheduler. Records of tasks that end
together are written with one write() (`add` then `flush`); the worker flushes before it waits
for the next task to end, so a record is in the file as soon as its task's end is handled.
"""

import binascii
import json
import os
import stat

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
SEPARATOR = "sep"  # in results/: chunks.SEPARATOR_RELPATH


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


def _exists(dir_fd, name):
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_separator(dir_fd):
    """The line the reader cuts its `cat` output with: random, so no task output can pass
    for it. Written aside and linked into place, so it is never seen half written."""
    if _exists(dir_fd, SEPARATOR):
        return
    token = binascii.hexlify(os.urandom(16)).decode()
    tmp = f"{SEPARATOR}.{token}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, f"SLURMRUNNER-SEPARATOR-{token}\n".encode())
    finally:
        os.close(fd)
    try:
        os.link(tmp, SEPARATOR, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileExistsError:
        pass  # another job of the run was first
    finally:
        os.unlink(tmp, dir_fd=dir_fd)


class Results:
    """The job's chunks in `results/` (open as `dir_fd`): `<stem>.jsonl`, `<stem>.1.jsonl`..."""

    def __init__(self, dir_fd, stem, job, chunk_records, chunk_bytes):
        self.dir_fd = dir_fd
        self.stem = stem
        self.job = job
        self.chunk_records = max(1, int(chunk_records or 1000))
        self.chunk_bytes = max(1, int(chunk_bytes or DEFAULT_CHUNK_BYTES))
        _write_separator(dir_fd)
        # A requeued job goes on appending to the last chunk, counting what is there.
        self.chunk = 0
        while _exists(dir_fd, self.chunk_name(self.chunk + 1)):
            self.chunk += 1
        self.in_chunk = self.total = 0
        self.out = self.out_size = None
        self.buf = []  # encoded lines not yet written
        self.buf_bytes = self.buf_records = 0  # their size, and the task records among them

    def chunk_name(self, chunk):
        return f"{self.stem}.jsonl" if chunk == 0 else f"{self.stem}.{chunk}.jsonl"

    def count_earlier(self, indices, done):
        """Task records already in this job's chunks (a requeued job); finished tasks go to
        `done`."""
        counts = []
        for chunk in range(self.chunk + 1):
            try:
                fd = os.open(
                    self.chunk_name(chunk),
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                    dir_fd=self.dir_fd,
                )
            except OSError:
                counts.append(0)
                continue
            with open(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    counts.append(0)
                    continue
                counts.append(_count_records(fh.read(), self.job, indices, done))
        self.in_chunk, self.total = counts[-1], sum(counts)

    def open_chunk(self):
        # Appended to by this worker only (O_RDWR to look at the last byte, see flush).
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        self.out = os.open(self.chunk_name(self.chunk), flags, 0o600, dir_fd=self.dir_fd)
        st = os.fstat(self.out)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{self.chunk_name(self.chunk)} is not a regular file")
        self.out_size = st.st_size

    def add(self, record, more):
        """Queue a line; a task record that fills the chunk closes it when `more` records are
        to come (the job has tasks left)."""
        task = "i" in record
        if task and not self.buf_records and os.fstat(self.out).st_size >= self.chunk_bytes:
            # A task filled the chunk with lines of its own, maybe more than a reader keeps:
            # this record goes to a fresh chunk, which the reader reads before the full one.
            self.next_chunk()
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        self.buf.append(line)
        self.buf_bytes += len(line)
        if not task:
            return
        self.buf_records += 1
        self.in_chunk += 1
        self.total += 1
        full = self.in_chunk >= self.chunk_records
        if more and (full or self.out_size + self.buf_bytes >= self.chunk_bytes):
            self.next_chunk()

    def emit(self, record, more=False):
        self.add(record, more)
        self.flush()

    def flush(self):
        """Write the queued lines, with one write()."""
        if not self.buf:
            return
        data = b"".join(self.buf)
        size = os.fstat(self.out).st_size
        if size != self.out_size and size and os.pread(self.out, 1, size - 1) != b"\n":
            # A task appended a line of its own and did not end it: end it, or these records
            # would be glued to it and lost with it.
            data = b"\n" + data
        os.write(self.out, data)
        self.out_size = size + len(data)
        self.buf, self.buf_bytes, self.buf_records = [], 0, 0

    def next_chunk(self):
        """Close the chunk with a `next` line (after what is queued), go on in a fresh one."""
        # the reader moves on when it sees this line; it never needs this file again
        line = {"event": "next", "job": self.job, "chunk": self.chunk + 1, "records": self.in_chunk}
        self.buf.append((json.dumps(line, separators=(",", ":")) + "\n").encode("utf-8"))
        self.flush()
        os.close(self.out)
        self.chunk += 1
        self.in_chunk = 0
        self.open_chunk()

    def end_line(self, t, **extra):
        line = {"event": "end", "job": self.job, "chunk": self.chunk, "records": self.in_chunk}
        line.update(tasks=self.total, t=t, **extra)
        return line
