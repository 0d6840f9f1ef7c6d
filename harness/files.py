"""Files that several processes (the jobs of a parallel sweep) may write at once."""

import contextlib
import fcntl
import os
from pathlib import Path


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


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
