"""NVIDIA's Multi-Process Service (MPS) for a sweep whose jobs share one GPU.

Without MPS the kernels of different processes never run at the same time: the GPU switches
between their contexts, and three ResNet-20 jobs at once trained no faster than one after the
other (0.99x on an H200). Under MPS their kernels run side by side. It needs no root: a
per-user control daemon (`nvidia-cuda-mps-control -d`) serves every CUDA process started with
its CUDA_MPS_PIPE_DIRECTORY; a process whose daemon does not answer runs as it would without.

With `trainer.mps=auto` (the default), a sweep that runs several jobs at once on a CUDA device
(`hydra/launcher=joblib`, `hydra.launcher.n_jobs` > 1) joins a daemon that answers already
(someone else's: left running), or starts one in the sweep folder, `mps/pipe` and `mps/log`
(a unix socket's path has at most 107 bytes, so a deep sweep folder gets its pipe in
/tmp/harness-mps-<hash of the folder>), and stops it at exit. The variables go into this
process's environment before Hydra starts any joblib worker, and so into every job before it
initialises CUDA. Where MPS cannot run (no binary, the daemon fails, or a CUDA client cannot
connect, as in some containers) the sweep says so in one line and its jobs share the GPU
time-sliced. `trainer.mps=off` never starts one. Nothing happens on a CPU.
"""

import atexit
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
DEFAULT_PIPE = Path("/tmp/nvidia-mps")  # where a daemon started without the variable listens
FOLDER = "mps"  # in the sweep folder
PIPE_MAX = 80  # characters: the daemon's sockets, e.g. <pipe>/control, must fit a 107-byte socket path
TAG = "mps"  # on the sweep's parent run (what the sweep did) and on each job's run (the pipe it used)
START_WAIT_S, QUIT_WAIT_S = 15, 30

# A CUDA client, as small as one gets (the driver API through ctypes: no torch import): it
# connects to the daemon and has its server make a context. Where no driver is installed there
# is nothing MPS could refuse, and the jobs themselves say that CUDA is missing.
CLIENT_CHECK = """
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError:
    sys.exit(0)
device, context, memory = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
for name, *args in [("cuInit", 0), ("cuDeviceGet", ctypes.byref(device), 0),
                    ("cuDevicePrimaryCtxRetain", ctypes.byref(context), device),
                    ("cuCtxSetCurrent", context), ("cuMemAlloc_v2", ctypes.byref(memory), ctypes.c_size_t(1 << 20))]:
    status = getattr(cuda, name)(*args)
    if status:
        text = ctypes.c_char_p()
        cuda.cuGetErrorString(status, ctypes.byref(text))
        sys.exit(f"{name}: CUDA error {status} ({(text.value or b'?').decode()})")
"""


class MpsMode(str, Enum):
    auto = "auto"  # on when a sweep runs several jobs at once on a CUDA device
    off = "off"


def wanted(mode: str, device_kind: str, jobs_at_once: int) -> bool:
    return MpsMode(mode) == MpsMode.auto and device_kind == "cuda" and jobs_at_once > 1


def device_kind(device: str) -> str:
    """`trainer.device` as "cuda" or "cpu", without initialising CUDA in this process
    (torch.cuda.device_count asks NVML where it can; is_available would initialise the driver)."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.device_count() > 0 else "cpu"
    return str(device).split(":")[0]


def jobs_at_once(launcher) -> int:
    """How many jobs the sweep's launcher runs at once: joblib's n_jobs (-1: every CPU, -2: all
    but one, ...); 1 for Hydra's basic launcher and for cluster launchers (a job per GPU)."""
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n = int(launcher.get("n_jobs", -1))
    return n if n > 0 else max((os.cpu_count() or 1) + 1 + n, 1)


def for_sweep(config, sweep_dir: Path) -> str:
    """Join or start the daemon a sweep's jobs should share the GPU through, as the config
    asks; return what was done (for the parent run's tag): off, not needed, joined, started,
    or unavailable. Call before the launcher starts any worker."""
    if MpsMode(config.trainer.mps) == MpsMode.off:
        return "off"
    if not wanted(config.trainer.mps, device_kind(config.trainer.device), jobs_at_once(config.hydra.launcher)):
        return "not needed"
    daemon = Daemon.join_or_start(sweep_dir)
    if daemon is None:
        return "unavailable"
    return "joined" if not daemon.owned else "started"


def client_of() -> str:
    """For a job's run: the daemon's pipe folder this process would use, or "off"."""
    return os.environ.get(PIPE_ENV) or "off"


def answers(pipe: Path) -> bool:
    """Whether a control daemon answers at this pipe folder."""
    if not pipe.is_dir():
        return False
    try:
        result = subprocess.run([CONTROL], input="get_server_list\n", capture_output=True, text=True,
                                timeout=10, env={**os.environ, PIPE_ENV: str(pipe)})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def folders(sweep_dir: Path) -> tuple:
    """(pipe folder, log folder) of a sweep's daemon."""
    pipe, logs = sweep_dir / FOLDER / "pipe", sweep_dir / FOLDER / "log"
    if len(str(pipe)) > PIPE_MAX:
        pipe = Path("/tmp") / f"harness-mps-{hashlib.sha256(str(sweep_dir).encode()).hexdigest()[:12]}"
    return pipe, logs


def daemon_pids(pipe: Path) -> list:
    """PIDs of the MPS processes (control daemon, servers) listening at this pipe folder,
    found by their command and environment in /proc (only this user's are readable)."""
    found, setting = [], f"{PIPE_ENV}={pipe}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if b"nvidia-cuda-mps" in (entry / "cmdline").read_bytes() \
                    and setting in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # ended meanwhile, or someone else's
    return found


class Daemon:
    """An MPS control daemon this process's CUDA children connect to; `owned` if this sweep
    started it (then stopped at exit), else someone else's (left running)."""

    def __init__(self, pipe: Path, owned: bool, made_pipe: bool = False):
        self.pipe, self.owned, self.made_pipe = pipe, owned, made_pipe
        self.saved_env = {name: os.environ.get(name) for name in (PIPE_ENV, LOG_ENV)}
        self.stopped = False

    @classmethod
    def join_or_start(cls, sweep_dir: Path) -> "Daemon | None":
        """The daemon the sweep's jobs will use, its variables exported; None (said in one
        line) where MPS cannot run here."""
        if shutil.which(CONTROL) is None:
            log.warning("MPS: %s is not on PATH: the sweep's jobs share the GPU time-sliced", CONTROL)
            return None
        theirs = Path(os.environ.get(PIPE_ENV) or DEFAULT_PIPE)
        if answers(theirs):
            os.environ[PIPE_ENV] = str(theirs)
            log.info("MPS: the sweep's jobs join the daemon at %s (left running at the end)", theirs)
            return cls(theirs, owned=False)
        pipe, logs = folders(sweep_dir)
        daemon = cls(pipe, owned=True, made_pipe=not pipe.exists() and pipe.parent == Path("/tmp"))
        atexit.register(daemon.stop)  # from here on: whatever happens, no daemon is left behind
        os.environ.update({PIPE_ENV: str(pipe), LOG_ENV: str(logs)})  # for the daemon and every job
        problem = None if answers(pipe) else daemon.start(logs)  # one answering: left by a killed run of this folder
        problem = problem or daemon.check_client()
        if problem:
            daemon.stop()
            log.warning("MPS: %s: the sweep's jobs share the GPU time-sliced", problem)
            return None
        log.info("MPS: a daemon for the sweep at %s (logs in %s), stopped when the sweep ends%s", pipe, logs,
                 " (the sweep folder's path is too long for its sockets)" if pipe.parent == Path("/tmp") else "")
        return daemon

    def start(self, logs: Path) -> str | None:
        """Start the daemon (its folders in this process's environment); what went wrong, or None."""
        self.pipe.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        # output to a file, not a pipe, which the forked daemon would hold open; its own session,
        # so that a terminal's Ctrl-C reaches the jobs and not the daemon they run on
        with tempfile.TemporaryFile("w+") as output:
            try:
                status = subprocess.run([CONTROL, "-d"], stdout=output, stderr=subprocess.STDOUT,
                                        timeout=START_WAIT_S, start_new_session=True).returncode
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"{CONTROL} -d failed ({e})"
            output.seek(0)
            said = " ".join(output.read().split())[:200]
        if status != 0:
            return f"{CONTROL} -d exited with status {status}" + (f" ({said})" if said else "")
        deadline = time.monotonic() + START_WAIT_S
        while not answers(self.pipe):  # -d returns once it has forked: wait until the daemon listens
            if time.monotonic() > deadline:
                return f"the daemon started by {CONTROL} -d did not answer within {START_WAIT_S} s"
            time.sleep(0.1)
        return None

    def check_client(self) -> str | None:
        """Connect a CUDA client through the daemon: what went wrong, or None."""
        try:
            result = subprocess.run([sys.executable, "-c", CLIENT_CHECK], capture_output=True, text=True,
                                    timeout=60)
        except subprocess.TimeoutExpired:
            return "a CUDA client could not connect within 60 s"
        if result.returncode != 0:
            return "a CUDA client could not connect: " + (result.stderr.strip().splitlines() or ["?"])[-1][:200]
        return None

    def stop(self) -> None:
        """Quit the daemon if this sweep started it and wait until its processes are gone
        (killing them after QUIT_WAIT_S); restore the environment. Safe to call twice.

        Called at interpreter exit: by then joblib (loky) has ended its idle workers, whose
        CUDA contexts would keep the daemon's quit waiting."""
        if self.stopped or not self.owned:
            return
        self.stopped = True
        try:
            subprocess.run([CONTROL], input="quit\n", capture_output=True, text=True, timeout=QUIT_WAIT_S,
                           env={**os.environ, PIPE_ENV: str(self.pipe)})
        except (OSError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + QUIT_WAIT_S
        while (left := daemon_pids(self.pipe)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            log.warning("MPS: process %d did not quit: killed", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.made_pipe:
            shutil.rmtree(self.pipe, ignore_errors=True)
