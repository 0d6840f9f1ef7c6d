"""How a job ended: the one word its folder (outcome.txt), its run's `outcome` tag and the
sweep's count all use."""

from enum import StrEnum


class Outcome(StrEnum):
    """A job's end. A str: it is written to files and tags as its word."""

    FINISHED = "finished"
    DIVERGED = "diverged"  # trained to its end, with a training loss that is not finite
    FAILED = "failed"
    KILLED = "killed"  # stopped (a signal, a full disk, a process gone): a resume continues it
    RUNNING = "running"  # not an end: the tag of a run that runs again (a resumed job or sweep)

    @property
    def done(self) -> bool:
        """Whether a resume leaves the job alone."""
        return self in (Outcome.FINISHED, Outcome.DIVERGED)

    @property
    def mlflow_status(self) -> str:
        """The status its MLflow run ends with: a diverged run ran to its end."""
        return {Outcome.DIVERGED: "FINISHED"}.get(self, self.name)
