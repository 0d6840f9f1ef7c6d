"""Processes as the harness needs to know them: is the process that made a run still alive,
which children are a joblib sweep's workers, making a worker die with its sweep (Linux's
/proc and prctl; elsewhere these answer "unknown" or do nothing), and which one process may
work in a job or sweep folder (hold)."""

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.files import try_folder_lock, write_atomically

PR_SET_PDEATHSIG = 1


def start_time(pid: int) -> str | None:
    """The process's start time since boot, in clock ticks: with the pid, it names one process
    (a pid is reused, the pair is not). None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command in parentheses


def age(pid: int) -> float | None:
    """Seconds since the process started; None where /proc does not say."""
    started = start_time(pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return None
    return None if started is None else uptime - int(started) / os.sysconf("SC_CLK_TCK")


def alive(pid: int, started: str | None) -> bool | None:
    """Whether that process still runs (True/False); None if this machine cannot tell."""
    if not Path("/proc").is_dir():
        return None
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def worker_children() -> list:
    """PIDs of this process's joblib (loky) worker processes."""
    me, found = str(os.getpid()), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if parent == me and b"loky" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # it ended meanwhile
    return found


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` to this process when its parent dies (a worker whose sweep
    was killed then checkpoints and stops instead of training on as an orphan)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        pass  # not Linux


HOLDER_FILE = "held_by.txt"  # in a held folder: which process holds it, for the one that cannot
IN_USE = 3  # the exit status of a job or a resume refused because another process holds the folder


class InUse(HarnessError):
    """Another process holds the folder (hold)."""


@contextlib.contextmanager
def hold(folder: Path):
    """Be the only process working in `folder` for the block: one job trains in a job folder,
    one resume works in a sweep folder. The lock is the folder's own (no lock file); the OS
    releases it when this process ends, even by SIGKILL. Raises InUse naming the holder."""
    for _ in range(3):  # holder() takes the lock for an instant to look: that is no holder
        if (fd := try_folder_lock(folder)) is not None:
            break
        time.sleep(0.05)
    else:
        raise InUse(f"{folder} is in use by {holder(folder)}: it runs once at a time")
    try:
        try:
            write_atomically(folder / HOLDER_FILE, f"pid {os.getpid()} on {socket.gethostname()} since "
                                                   f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        except OSError:
            pass  # a full disk: the lock holds all the same, and the refused are told "another process"
        yield
    finally:
        (folder / HOLDER_FILE).unlink(missing_ok=True)
        os.close(fd)


def holder(folder: Path) -> str | None:
    """Who holds `folder` (hold): `pid N on HOST since TIME`; None if no process does."""
    fd = try_folder_lock(folder)
    if fd is not None:
        os.close(fd)
        return None
    try:
        return (folder / HOLDER_FILE).read_text().strip()[:200] or "another process"
    except OSError:
        return "another process"  # it has just taken the lock and not yet written its name


def in_joblib_worker() -> bool:
    """Whether this process is one of the workers a joblib launcher runs jobs in."""
    return multiprocessing.current_process().name.startswith("LokyProcess")
