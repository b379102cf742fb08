"""The worker's files in the run folder: opened relative to a folder's descriptor, never through
a link; a task's --out-json read strictly; and the files of finished tasks reused for the next.

Part of the worker program (worker_ship.py joins the parts into the one program a job runs):
standard library only, Python 3.8+.

Creating a file costs an inode, and on some file systems (ext4 in a full block group, network
file systems) that is a millisecond or more, more than starting a short task. A task that ended
well leaves its args file, and its log when it wrote nothing, to the next task: renamed, not
created (`Reuse`). A task's files exist while it runs, as before; what a successful task leaves
is its log if it wrote one (a silent task has no log) and its --out-json.
"""

import contextlib
import json
import math
import os
import stat

LOG_TAIL_BYTES = 2048
MAX_MESSAGE = 4000  # records.MAX_TEXT allows 4096 characters
RESULT_MAX_DEPTH = 60  # records.MAX_DEPTH (64) counts the record around the result too
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a FIFO cannot block us
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
_CREATE_RW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class _BadResult(Exception):
    def __init__(self, cause, message):
        Exception.__init__(self, message)
        self.cause = cause


def _capped(text):
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _subdir(parent_fd, name):
    """A folder in the run folder, made if missing; refused if it is a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    return os.open(name, _DIR, dir_fd=parent_fd)


def _create(dir_fd, name, flags=_CREATE):
    """A new private file: whatever had its name (an earlier attempt's, a link) goes first."""
    try:
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(name, dir_fd=dir_fd)
        return os.open(name, flags, 0o600, dir_fd=dir_fd)


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


def _tail_of(fd):
    """The last LOG_TAIL_BYTES of an open log (from its first whole line), as text."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, LOG_TAIL_BYTES, max(0, size - LOG_TAIL_BYTES))
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if size > LOG_TAIL_BYTES and "\n" in text:
        text = text.split("\n", 1)[1]
    return text


class Reuse:
    """Files of one folder that finished tasks gave back, renamed for the next task instead of
    created: a rename costs no inode. A file is given back open, with its identity and size; it
    is taken only if, renamed, its new name is that very file (nothing swapped it in between)."""

    def __init__(self, dir_fd, flags):
        self.dir_fd = dir_fd
        self.flags = flags
        self.free = []  # (fd, name, (st_dev, st_ino), size)

    def give(self, fd, name, ident, size):
        self.free.append((fd, name, ident, size))

    def take(self, name):
        """(fd, identity, size): a file named `name`, given back (its size then) or created
        (size 0)."""
        while self.free:
            fd, old, ident, size = self.free.pop()
            try:
                os.rename(old, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == ident:
                    return fd, ident, size
            except OSError:
                pass
            os.close(fd)
        fd = _create(self.dir_fd, name, self.flags)
        st = os.fstat(fd)
        return fd, (st.st_dev, st.st_ino), 0

    def close(self):
        for entry in self.free:
            os.close(entry[0])
        self.free = []


def _finite(text):
    value = float(text)
    if math.isinf(value) or math.isnan(value):
        raise ValueError(f"number {text[:20]} is not finite")
    return value


def _no_constant(name):
    raise ValueError(f"{name} is not a number")


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
        raise _BadResult("bad_output", f"cannot read --out-json: {exc}") from None
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
        raise _BadResult("bad_output", f"--out-json is not valid JSON: {exc}") from None
    if max(size, len(data)) > limit:
        size = max(size, len(data))
        message = f"the result is {size} bytes, over max_result_bytes={limit}: it stays in {path}"
        raise _BadResult("result_too_large", message)
    if _depth(value) > RESULT_MAX_DEPTH:
        raise _BadResult("bad_output", f"--out-json nests deeper than {RESULT_MAX_DEPTH}")
    return value
