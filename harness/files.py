"""Files that several processes (the jobs of a parallel sweep) may write at once, and writes
that may fail (a full disk) without spoiling what was written before."""

import contextlib
import errno
import fcntl
import io
import os
from pathlib import Path

from harness.errors import HarnessError


class WriteError(HarnessError):
    """A file the harness writes could not be written (a full disk, a read-only folder)."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"cannot write {path}: {reason(error)}")
        self.path, self.errno = path, error.errno


def reason(error: OSError) -> str:
    """`No space left on device (ENOSPC)`: an OSError's cause, without its path."""
    return f"{error.strerror or error} ({errno.errorcode.get(error.errno, error.errno)})"


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive lock on `folder` (created if missing) for the block: one process at a
    time. The lock is on the folder itself, so no lock file is left behind."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_atomically(path: Path, data: str | bytes) -> None:
    """Readers see the old file or the whole new one, never a part (synced to disk first); a
    write that fails (WriteError) leaves the old file and no temporary."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, e) from None


def append(path: Path, data: bytes) -> None:
    """Add `data` at the end of `path` (created if missing), on disk when this returns; a write
    that fails (WriteError) takes back what it added, so no part of a line is left."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise WriteError(path, e) from None
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:  # a full disk can take part of a write before it refuses the rest
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise WriteError(path, e) from None
    finally:
        os.close(fd)


def try_folder_lock(folder: Path) -> int | None:
    """The exclusive lock on `folder` (the one folder_lock takes) if no other process holds it:
    an open descriptor that keeps it until closed, or until this process ends however it ends;
    None if another process holds it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def save_tensors(tensors: dict, path: Path) -> None:
    """torch.save, atomically; a write that fails is a WriteError naming the file, not torch's
    RuntimeError from deep inside its zip writer (so it is serialised in memory first)."""
    import torch  # here only: the processes and folders that use the rest of this module need no torch

    data = io.BytesIO()
    torch.save(tensors, data)
    write_atomically(path, data.getbuffer())
