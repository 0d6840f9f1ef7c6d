"""Processes as the harness needs to know them: is the process that made a run still alive,
which children are a joblib sweep's workers, and making a worker die with its sweep (Linux's
/proc and prctl; elsewhere these answer "unknown" or do nothing)."""

import ctypes
import os
import signal
from pathlib import Path

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
