"""A job's checkpoint: what survives preemption.

The checkpoint (`checkpoint.pt` in the job folder) holds everything the rest of the run
depends on: model, optimiser and scheduler state, every random generator (torch's, CUDA's,
the batch sampler's, kept as it was when the current epoch began), the position in training,
the steps averaged so far into the next training-loss point, and the MLflow run id. It is
written atomically, every `trainer.checkpoint_every` epochs and when a stop is requested
(harness.jobs.signals), so a resumed job continues exactly where the checkpoint left it (bit
for bit on a CPU).
"""

import logging
import os
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.files import save_tensors
from harness.jobs.folder import JobFolder
from harness.jobs.signals import StopRequests

log = logging.getLogger(__name__)


class Checkpoints:
    """Where a job's checkpoint lives, how often it is written, and the job's stop requests."""

    def __init__(self, folder: Path, every: int, run_id: str, stop: StopRequests | None = None):
        self.path = JobFolder(folder).checkpoint
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

