"""MLflow for one job: the store, the job's run, its params, tags, artifacts and buffered metrics.
(A sweep's parent run and its lifecycle: harness.sweep.)

Only MlflowClient is used, never the fluent `mlflow.start_run` API: its active run is
process-global (Hydra's basic launcher runs every job in one process) and it obeys
MLFLOW_RUN_ID from the environment, which would pour every job into one run.
"""

import contextlib
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
from omegaconf import OmegaConf

from harness import contract
from harness.errors import ConfigError, HarnessError
from harness.files import folder_lock

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" per run

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

log = logging.getLogger(__name__)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
logging.getLogger("alembic").setLevel(logging.WARNING)

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
    """The resolved config as {"model.depth": "20", ...}, without instantiate's `_partial_` flags."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key != "_partial_":
                flat[f"{prefix}{key}"] = str(value)

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
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


# ---------------------------------------------------------------- one job


class JobRun:
    """The MLflow run of one job: params and tags up front, metrics in batches, always ended."""

    def __init__(self, client, run_id):
        self.client, self.run_id = client, run_id
        self.metrics = MetricBuffer(client, run_id)

    @classmethod
    def create(cls, client, experiment_id, cfg, job, tags: dict, parent: dict | None = None) -> "JobRun":
        """parent: the sweep's parent run (harness.sweep.read_parent), for a job of a sweep."""
        all_tags = {contract.OVERRIDES: " ".join(job.overrides), "host": socket.gethostname(),
                    "torch_version": torch.__version__, **git_state(Path(cfg.paths.root)),
                    **{contract.choice_tag(group): choice for group, choice in job.choices.items()}, **tags}
        name = "default" if not job.overrides else " ".join(job.overrides)
        if parent is not None:
            swept = [o for o in job.overrides if o.split("=", 1)[0] in parent["swept"]]
            name = f"#{job.num} " + (" ".join(swept) or name)
            all_tags.update({contract.PARENT: parent["run_id"], contract.SWEEP_ID: parent["sweep_id"],
                             contract.JOB_NUM: str(job.num)})
        all_tags[contract.RUN_NAME] = name[:250]
        all_tags = {key: str(value) for key, value in all_tags.items()}  # the REST API takes strings only
        run = client.create_run(experiment_id, tags=all_tags, run_name=all_tags[contract.RUN_NAME])
        job_run = cls(client, run.info.run_id)
        job_run.log_params(flatten(cfg))
        return job_run

    def log_params(self, params: dict) -> None:
        """MlflowClient.log_batch splits them into requests the store accepts."""
        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in params.items()], synchronous=True)

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
            self.set_tags({contract.ERROR: _error_line(error), contract.OUTCOME: "killed" if interrupted else "failed"})
            trace = job.output_dir / "traceback.txt"
            trace.write_text("".join(traceback.format_exception(error)))
            self.client.log_artifact(self.run_id, str(trace))
            self.log_job_log(job)
        finally:
            self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")

    def finish(self, outcome: str) -> None:
        self.metrics.flush()
        self.set_tags({contract.OUTCOME: outcome, contract.DIVERGED: str(outcome == "diverged").lower()})
        self.client.set_terminated(self.run_id, "FINISHED")


class MetricBuffer:
    """Metrics collected as device tensors or floats and sent in batches at flush points.

    `add` never reads a device tensor (no host-device sync per step); `flush` copies every
    pending tensor to the host in one transfer and hands them all to one log_batch call
    (MLflow splits it into requests of the size its store accepts).
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
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, s, t in rows], synchronous=True)
        return [(k, v, s) for k, v, s, _ in rows]
