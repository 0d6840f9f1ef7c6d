"""A job's checkpoint and its stop requests: what survives preemption, and how a job learns it
must stop.

The checkpoint (`checkpoint.pt` in the job folder) holds everything the rest of the run
depends on: model, optimiser and scheduler state, every random generator (torch's, CUDA's,
the batch sampler's, kept as it was when the current epoch began), the position in training,
the steps averaged so far into the next training-loss point, and the MLflow run id. It is
written atomically, every `trainer.checkpoint_every` epochs and when a stop is requested, so
a resumed job continues exactly where the checkpoint left it (bit for bit on a CPU).

SIGTERM (what SLURM and `kill` send) and SIGINT (Ctrl-C) do not stop the process at once:
they ask the training loop to stop at the next step boundary, write a checkpoint, send the
metrics and end the run as KILLED. A second signal stops at once. In a job submitit runs on
SLURM, SIGUSR2 (submitit's warning before the time limit or a preemption) does the same, and
is then passed on to submitit, which requeues the job.
"""

import contextlib
import io
import logging
import os
import signal
import threading
import time
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.files import write_atomically

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 2.0  # a signal this soon after the first is the same request (Ctrl-C reaches a process twice)


class Interrupted(Exception):
    """Training stopped at a step boundary because a stop was requested."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def in_submitit_job() -> bool:
    return "SUBMITIT_FOLDER" in os.environ  # set by submitit's job runner


class StopRequests:
    """While entered (in the main thread), SIGTERM and SIGINT (and SIGUSR2 in a submitit job)
    set `signal` instead of stopping the process; another one, more than REPEAT_WINDOW_S later,
    raises KeyboardInterrupt. A handler that was there before and is marked `chain` (the
    sweep's, harness.jobs.sweep) is called too; `pass_on` calls any other one afterwards."""

    def __init__(self):
        self.signal, self.since = None, 0.0
        self.previous = {}

    def pass_on(self, signum: int) -> None:
        """Hand a signal to the handler it had before (submitit's requeue for SIGUSR2)."""
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, None)

    def _handle(self, signum, frame):
        previous = self.previous.get(signum)
        if getattr(previous, "chain", False):
            previous(signum, frame)
        if self.signal is None:
            self.signal, self.since = signum, time.monotonic()
        elif time.monotonic() - self.since > REPEAT_WINDOW_S:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS + ((signal.SIGUSR2,) if in_submitit_job() else ()):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


class Checkpoints:
    """Where a job's checkpoint lives, how often it is written, and the job's stop requests."""

    def __init__(self, folder: Path, every: int, run_id: str, stop: StopRequests | None = None):
        self.path = Path(folder) / CHECKPOINT_FILE
        self.every, self.run_id = every, run_id
        self.stop = stop or StopRequests()

    def due(self, epoch: int) -> bool:
        return self.every > 0 and epoch % self.every == 0

    @property
    def stop_signal(self) -> int | None:
        return self.stop.signal

    def save(self, state: dict) -> None:
        """Write atomically: a reader (or a resume) sees the old checkpoint or the whole new one."""
        state = {**state, "run_id": self.run_id, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        save_tensors(state, self.path)

    def load(self) -> dict | None:
        """The saved state, with the global random generators already restored; None if there is
        none, or if it cannot be read: then it is set aside (renamed *.corrupt) and training
        starts again from step 0, into the same run."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain values: no code runs
            if not isinstance(state, dict) or not {"torch_rng", "cuda_rng", "run_id", "step"} <= state.keys():
                raise ValueError("not a checkpoint of this harness")
        except Exception as e:  # truncated, empty, or not a checkpoint: torch raises many kinds
            if "GLOBAL" in str(e):  # it names code to run: someone made it so, and it is refused, not set aside
                raise HarnessError(f"the checkpoint {self.path} names code to run ({_unsupported_global(e)}): "
                                   "refused; move it away to start this job again") from None
            aside = set_aside(self.path)
            why = str(e).strip().split(". ")[0].splitlines()[0][:200] if str(e).strip() else type(e).__name__
            log.warning("the checkpoint %s cannot be read (%s): set aside as %s; training starts again from step 0",
                        self.path, why, aside.name)
            return None
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state


def save_tensors(tensors: dict, path: Path) -> None:
    """torch.save, atomically; a write that fails is a WriteError naming the file, not torch's
    RuntimeError from deep inside its zip writer (so it is serialised in memory first)."""
    data = io.BytesIO()
    torch.save(tensors, data)
    write_atomically(path, data.getbuffer())


def _unsupported_global(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")[:200]


def set_aside(path: Path) -> Path:
    """Rename `path` to `<name>.corrupt` (`.corrupt.2`, ... if taken): kept for a look, never deleted."""
    aside, n = path.with_name(f"{path.name}.corrupt"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, aside)
    return aside


def saved_run_id(folder: Path) -> str | None:
    """The MLflow run a job folder's checkpoint belongs to, without restoring anything."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with contextlib.suppress(Exception):
        return torch.load(path, map_location="cpu", weights_only=True)["run_id"]
    return None
