"""A multirun sweep's life in MLflow: its parent run, created before any job and ended exactly
once, and the files in the sweep folder through which jobs find their parent and report
their outcome (a job that dies before it can make a run still leaves its outcome)."""

import atexit
import json
import logging
import socket
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import RunTag

from harness import contract
from harness.errors import HarnessError
from harness.files import write_atomically
from harness.tracking import TrackingError, git_state, open_experiment

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent_run.json"  # in the sweep folder: how jobs find their parent run
OUTCOME_FILE = "outcome.txt"  # in each job's folder: finished, diverged or failed


class Sweep:
    """The parent run of a multirun sweep: created before any job, ended exactly once."""

    def __init__(self, client, run_id, folder: Path, sweep_id: str):
        self.client, self.run_id, self.folder, self.sweep_id = client, run_id, folder, sweep_id
        self.ended = False

    @classmethod
    def start(cls, config) -> "Sweep":
        folder = Path(config.hydra.sweep.dir)
        sweep_id = f"{folder.parent.name}/{folder.name}"  # <date>/<time>-<random>
        client, experiment_id = open_experiment(config.tracking.uri, config.tracking.experiment)
        overrides = list(config.hydra.overrides.task)
        swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
        swept += [key for key in (config.hydra.sweeper.get("params") or {}) if key not in swept]  # presets' axes
        tags = {contract.RUN_NAME: f"sweep {sweep_id}", contract.SWEEP_ID: sweep_id, contract.KIND: contract.KIND_SWEEP,
                contract.OVERRIDES: " ".join(overrides), contract.SWEPT: " ".join(swept),
                "host": socket.gethostname(), **git_state(Path(config.paths.root))}
        run = client.create_run(experiment_id, tags=tags, run_name=tags[contract.RUN_NAME])
        folder.mkdir(parents=True, exist_ok=True)
        info = {"run_id": run.info.run_id, "experiment_id": experiment_id, "sweep_id": sweep_id, "swept": swept}
        write_atomically(folder / PARENT_FILE, json.dumps(info))
        log.info("sweep %s: MLflow parent run %s in %s", sweep_id, run.info.run_id, config.tracking.uri)
        return cls(client, run.info.run_id, folder, sweep_id)

    def end(self, completed: bool) -> int:
        """End the parent run; return how many jobs failed. Safe to call twice.

        Outcomes are read from the jobs' own folders rather than from MLflow, so a job that
        failed before it could create its run, or never finished, still counts.
        """
        if self.ended:
            return 0
        self.ended = True
        outcomes = [read_outcome(folder.parent) for folder in sorted(self.folder.glob("*/.hydra"))]
        failed = sum(o not in ("finished", "diverged") for o in outcomes)
        diverged = outcomes.count("diverged")
        self.client.log_batch(self.run_id, tags=[RunTag("jobs", str(len(outcomes))),
                                                 RunTag("jobs_failed", str(failed)),
                                                 RunTag("jobs_diverged", str(diverged))])
        status = "FINISHED" if completed and not failed else "FAILED"
        self.client.set_terminated(self.run_id, status)
        summary = f"sweep {self.sweep_id}: {len(outcomes)} jobs, {failed} failed, {diverged} diverged"
        (log.warning if failed or not completed else log.info)(summary)
        return failed


def write_outcome(job_dir: Path, outcome: str) -> None:
    write_atomically(job_dir / OUTCOME_FILE, outcome)


def read_outcome(job_dir: Path) -> str:
    path = job_dir / OUTCOME_FILE
    return path.read_text().strip() if path.is_file() else "unknown"


def read_parent(sweep_dir: Path) -> dict:
    path = sweep_dir / PARENT_FILE
    if not path.is_file():
        raise TrackingError(f"{path} is missing: the sweep's MLflow parent run was not created")
    return json.loads(path.read_text())


class SweepCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun sweep.

    The parent is created in on_multirun_start, before any job (and before any job could
    race on a fresh SQLite file). Hydra skips on_multirun_end when a job raised, so the
    parent is also ended at interpreter exit, marked FAILED.
    """

    sweep = None

    def on_multirun_start(self, config, **kwargs):
        try:
            self.sweep = Sweep.start(config)
        except HarnessError as e:
            log.error("error: %s", e)
            raise SystemExit(2)  # Hydra turns Exceptions from callbacks into warnings
        atexit.register(self.sweep.end, completed=False)

    def on_multirun_end(self, config, **kwargs):
        if self.sweep is not None and self.sweep.end(completed=True):
            raise SystemExit(1)  # the sweep went on past failed jobs; the exit status still tells
