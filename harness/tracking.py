"""Everything MLflow: the store, the sweep's parent run, one run per job, batched metrics.

Only MlflowClient is used, never the fluent `mlflow.start_run` API: its active run is
process-global (Hydra's basic launcher runs every job in one process) and it obeys
MLFLOW_RUN_ID from the environment, which would pour every job into one run.
"""

import atexit
import contextlib
import json
import logging
import os
import platform
import socket
import subprocess
import time
import traceback
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from harness.errors import ConfigError, HarnessError
from harness.files import folder_lock, write_atomically

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" per run

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

log = logging.getLogger(__name__)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
logging.getLogger("alembic").setLevel(logging.WARNING)

PARENT_FILE = "mlflow_parent_run.json"  # in the sweep folder: how jobs find their parent run
BATCH_LIMIT = 1000  # metrics per MlflowClient.log_batch call (the REST API's limit)
PARAM_LIMIT = 100  # params per call


class TrackingError(HarnessError):
    """The MLflow store cannot be reached or used as configured."""


# ---------------------------------------------------------------- the store


def open_experiment(uri: str, name: str):
    """(client, experiment_id), creating the experiment if needed.

    For a SQLite store the experiment's artifacts go beside the database file, at an
    absolute location: MLflow's default would resolve against the working directory.
    """
    artifact_location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_absolute():
            raise ConfigError(f"tracking.uri={uri!r} must name an absolute path: sqlite:////abs/path/mlflow.db")
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_location = (db.parent / "artifacts" / urllib.parse.quote(name, safe="")).as_uri()
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    else:
        raise ConfigError(
            f"tracking.uri={uri!r} is not supported: use sqlite:////abs/path/mlflow.db or http://HOST:PORT "
            "(MLflow >= 3.13 refuses the ./mlruns file store)"
        )
    # processes opening a fresh SQLite file at once race on its schema migration, which
    # MlflowClient runs as soon as it is made
    lock = folder_lock(db.parent) if artifact_location else contextlib.nullcontext()
    try:
        with lock:
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return client, client.create_experiment(name, artifact_location=artifact_location)
                except MlflowException:  # a server's other client created it first
                    experiment = client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
    except MlflowException as e:
        raise TrackingError(f"cannot use MLflow store {uri}: {str(e).splitlines()[0]}") from None
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"tracking.experiment={name!r} is deleted in {uri}: restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another name"
        )
    return client, experiment.experiment_id


def _check_server(uri: str) -> None:
    """Fail in seconds with one line, rather than after MLflow's minutes of retries."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except OSError as e:
        raise TrackingError(
            f"no MLflow server answers at tracking.uri={uri} ({e}): start one with "
            "`mlflow server --host 127.0.0.1 --port PORT --backend-store-uri sqlite:////abs/path/mlflow.db`"
        ) from None


# ---------------------------------------------------------------- run metadata


def flatten(cfg) -> dict:
    """The resolved config as {"model.depth": "20", ...}."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = str(value)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def git_state(root: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_commit": "unknown"}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"git_commit": head.stdout.strip(), "git_dirty": str(dirty).lower(),
                "mlflow.source.git.commit": head.stdout.strip()}
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": "unknown"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:5000]


# ---------------------------------------------------------------- the sweep


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
        tags = {"mlflow.runName": f"sweep {sweep_id}", "sweep_id": sweep_id, "kind": "sweep",
                "overrides": " ".join(overrides), "swept": " ".join(swept), "host": socket.gethostname(),
                **git_state(Path(config.paths.root))}
        run = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"])
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


OUTCOME_FILE = "outcome.txt"  # in each job's folder: finished, diverged or failed


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


# ---------------------------------------------------------------- one job


class JobRun:
    """The MLflow run of one job: params and tags up front, metrics in batches, always ended."""

    def __init__(self, client, run_id):
        self.client, self.run_id = client, run_id
        self.metrics = MetricBuffer(client, run_id)

    @classmethod
    def create(cls, client, experiment_id, cfg, job, tags: dict) -> "JobRun":
        all_tags = {"overrides": " ".join(job.overrides), "host": socket.gethostname(),
                    "torch_version": torch.__version__, **git_state(Path(cfg.paths.root)), **tags}
        name = "default" if not job.overrides else " ".join(job.overrides)
        if job.sweep_dir is not None:
            parent = read_parent(job.sweep_dir)
            swept = [o for o in job.overrides if o.split("=", 1)[0] in parent["swept"]]
            name = f"#{job.num} " + (" ".join(swept) or name)
            all_tags.update({"mlflow.parentRunId": parent["run_id"], "sweep_id": parent["sweep_id"],
                             "job_num": str(job.num)})
        all_tags["mlflow.runName"] = name[:250]
        all_tags = {key: str(value) for key, value in all_tags.items()}  # the REST API takes strings only
        run = client.create_run(experiment_id, tags=all_tags, run_name=all_tags["mlflow.runName"])
        job_run = cls(client, run.info.run_id)
        job_run.log_params(flatten(cfg))
        return job_run

    def log_params(self, params: dict) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), PARAM_LIMIT):
            self.client.log_batch(self.run_id, params=items[start:start + PARAM_LIMIT], synchronous=True)

    def set_tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_artifacts(self, job, cfg, model=None) -> None:
        """Resolved config, Hydra's .hydra/ folder, the job log and the model weights."""
        (job.output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        self.client.log_artifact(self.run_id, str(job.output_dir / "config_resolved.yaml"))
        if (job.output_dir / ".hydra").is_dir():
            self.client.log_artifacts(self.run_id, str(job.output_dir / ".hydra"), "hydra")
        if model is not None:
            weights = job.output_dir / "model_weights.pt"
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
            self.client.log_artifact(self.run_id, str(weights), "model")
        self.log_job_log(job)

    def log_job_log(self, job) -> None:
        for handler in logging.getLogger().handlers:
            handler.flush()
        if job.log_file.is_file():
            self.client.log_artifact(self.run_id, str(job.log_file))

    def fail(self, error: BaseException, job) -> None:
        """Record an exception: tag, traceback artifact, FAILED status (KILLED if interrupted)."""
        interrupted = isinstance(error, KeyboardInterrupt)
        try:
            self.metrics.flush()
            self.set_tags({"error": _error_line(error), "outcome": "killed" if interrupted else "failed"})
            trace = job.output_dir / "traceback.txt"
            trace.write_text("".join(traceback.format_exception(error)))
            self.client.log_artifact(self.run_id, str(trace))
            self.log_job_log(job)
        finally:
            self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")

    def finish(self, outcome: str) -> None:
        self.metrics.flush()
        self.set_tags({"outcome": outcome, "diverged": str(outcome == "diverged").lower()})
        self.client.set_terminated(self.run_id, "FINISHED")


class MetricBuffer:
    """Metrics collected as device tensors or floats and sent in batches at flush points.

    `add` never reads a device tensor (no host-device sync per step); `flush` copies every
    pending tensor to the host in one transfer and sends BATCH_LIMIT metrics per call.
    """

    def __init__(self, client, run_id):
        self.client, self.run_id = client, run_id
        self.pending = []  # (key, value, step, timestamp_ms)

    def add(self, step: int, metrics: dict) -> None:
        now = int(time.time() * 1000)
        self.pending.extend((key, value, step, now) for key, value in metrics.items())

    def flush(self) -> list:
        """Send everything pending; return it as [(key, float value, step)]."""
        if not self.pending:
            return []
        tensors = [v for _, v, _, _ in self.pending if isinstance(v, torch.Tensor)]
        host = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist()) if tensors else None
        rows = [(k, next(host) if isinstance(v, torch.Tensor) else float(v), s, t) for k, v, s, t in self.pending]
        self.pending = []
        metrics = [Metric(k, v, t, s) for k, v, s, t in rows]
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH_LIMIT], synchronous=True)
        return [(k, v, s) for k, v, s, _ in rows]
