"""A job's folder: the files a job keeps there, each named here once, and its job.json, read
and written through one type (JobRecord).

    job.json              which sweep and job it is, its MLflow run and store, what it started with
    .hydra/config.yaml    the config it started with (Hydra writes it; a resume keeps it)
    checkpoint.pt         what a resume continues from (harness.jobs.checkpoint)
    metrics_unsent.jsonl  metric points not yet taken by the store (harness.tracking.store.MetricBuffer)
    metrics_sent.json     the last step the store took of each metric
    outcome.txt           how the job ended (harness.jobs.outcome), even one that never made a run
    held_by.txt           which process runs the job (harness.jobs.processes.hold)

A sweep's jobs have their folders in the sweep's, numbered from 0; the sweep's own files are
harness.jobs.sweep's.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.files import write_atomically
from harness.jobs.outcome import Outcome
from harness.jobs.processes import HOLDER_FILE

JOB_FILE = "job.json"
SAVED_CONFIG = ".hydra/config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
UNSENT_FILE, SENT_FILE = "metrics_unsent.jsonl", "metrics_sent.json"
OUTCOME_FILE = "outcome.txt"


@dataclass
class JobRecord:
    """What job.json says: which sweep and job number (a single run: no sweep, 0), the job's
    overrides, its MLflow run and the store that has it (None until it has one), and what it
    started with (harness.jobs.job.JobInfo.state)."""

    sweep_dir: Path | None
    num: int
    overrides: list
    run_id: str | None = None
    uri: str | None = None
    experiment: str | None = None
    recorded: dict | None = None


class JobFolder:
    """A job's folder (see the module's docstring for its files)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    job_file = property(lambda self: self.path / JOB_FILE)
    saved_config = property(lambda self: self.path / SAVED_CONFIG)
    checkpoint = property(lambda self: self.path / CHECKPOINT_FILE)
    unsent = property(lambda self: self.path / UNSENT_FILE)
    sent = property(lambda self: self.path / SENT_FILE)
    outcome_file = property(lambda self: self.path / OUTCOME_FILE)
    held_by = property(lambda self: self.path / HOLDER_FILE)

    def has_record(self) -> bool:
        """Whether the job has a job.json: it started (or a resume prepared it) and can be resumed."""
        return self.job_file.is_file()

    def read(self) -> JobRecord:
        saved = json.loads(self.job_file.read_text())
        return JobRecord(Path(saved["sweep_dir"]) if saved["sweep_dir"] else None, saved["num"], saved["overrides"],
                         saved.get("run_id"), saved.get("uri"), saved.get("experiment"), saved.get("recorded"))

    def write(self, record: JobRecord) -> None:
        write_atomically(self.job_file, json.dumps(
            {**asdict(record), "sweep_dir": str(record.sweep_dir) if record.sweep_dir else None}))

    def outcome(self) -> Outcome | None:
        """How the job ended; None if it has not (or never started)."""
        if not self.outcome_file.is_file():
            return None
        try:
            return Outcome(self.outcome_file.read_text().strip())
        except ValueError:  # not a word of this harness: as if it had not ended
            return None

    def done(self) -> bool:
        """Whether the job finished or diverged: a resume leaves it alone."""
        outcome = self.outcome()
        return outcome is not None and outcome.done

    def write_outcome(self, outcome: Outcome) -> None:
        write_atomically(self.outcome_file, outcome)
