"""MLflow for one job: the store, the job's run, its params, tags, artifacts and buffered metrics.
(A sweep's parent run and its lifecycle: harness.jobs.sweep.)

Only MlflowClient is used, never the fluent `mlflow.start_run` API: its active run is
process-global (Hydra's basic launcher runs every job in one process) and it obeys
MLFLOW_RUN_ID from the environment, which would pour every job into one run.
"""

import base64
import contextlib
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from omegaconf import BooleanNode, OmegaConf

from harness import contract
from harness.errors import ConfigError, HarnessError
from harness.files import WriteError, append, folder_lock, reason, save_tensors, write_atomically
from harness.jobs.folder import SENT_FILE, UNSENT_FILE
from harness.jobs.outcome import Outcome
from harness.jobs.processes import start_time
from harness.jobs.signals import Interrupted

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" per run
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file, now that tqdm is installed

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from requests.exceptions import RequestException  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

# what a store that cannot be reached or written raises through MLflow's client
STORE_ERRORS = (MlflowException, SQLAlchemyError, RequestException, OSError)

log = logging.getLogger(__name__)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
logging.getLogger("alembic").setLevel(logging.WARNING)
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # not a "Retrying (...)" line per retry

class TrackingError(HarnessError):
    """The MLflow store cannot be reached or used as configured."""


def from_the_store(error: BaseException) -> bool:
    """Whether the store raised `error`, rather than a file of the job's own (an OSError that is
    not a request's)."""
    return isinstance(error, (TrackingError, *STORE_ERRORS)) and \
        (isinstance(error, RequestException) or not isinstance(error, OSError))


# ---------------------------------------------------------------- credentials

# user:password@ after the // of a URL, also as Hydra writes an override (user\:password@)
_CREDENTIALS = re.compile(r"(?<=//)([^/@\s:\\]+)(\\?):([^/@\s]+)@")


def redact(text: str) -> str:
    """URLs with user:password@ keep the user and lose the password."""
    return _CREDENTIALS.sub(r"\1\2:***@", text)


class RedactCredentials(logging.Filter):
    """A logging filter (conf/hydra/job_logging): no password from a tracking URI in a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CREDENTIALS.search(message):
            record.msg, record.args = redact(message), None
        return True


class JobLogFile(logging.FileHandler):
    """The job log's file (conf/hydra/job_logging): on a full disk the lines still reach stderr,
    and the file loses them with one note rather than a traceback for each line."""

    noted = False

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        if not self.noted:
            self.noted = True
            sys.stderr.write(f"note: the job log {self.baseFilename} loses lines: {reason(error)}\n")


# ---------------------------------------------------------------- the store


def open_experiment(uri: str, name: str, timeout: float = 60):
    """(client, experiment_id), creating the experiment if needed; TrackingError in seconds,
    in one line, where the store cannot be used.

    For a SQLite store the experiment's artifacts go beside the database file, at an
    absolute location: MLflow's default would resolve against the working directory. For a
    server, MLflow's HTTP retries are bounded so that a server that stops answering costs at
    most about `timeout` seconds per request.
    """
    artifact_location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_absolute():
            raise ConfigError(f"tracking.uri={uri!r} must name an absolute path: sqlite:////abs/path/mlflow.db")
        check_writable(db)
        artifact_location = (db.parent / "artifacts" / urllib.parse.quote(name, safe="")).as_uri()
    elif uri.startswith(("http://", "https://")):
        bound_http_retries(timeout)
        _check_server(uri)
    else:
        raise ConfigError(
            f"tracking.uri={redact(uri)!r} is not supported: use sqlite:////abs/path/mlflow.db or http://HOST:PORT "
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
                    return client, client.create_experiment(name, artifact_location=artifact_location,
                                                            tags={contract.EXPERIMENT_KIND: contract.MODEL_TRAINING})
                except MlflowException:  # a server's other client created it first
                    experiment = client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
            if contract.EXPERIMENT_KIND not in experiment.tags:  # made before the harness set it
                client.set_experiment_tag(experiment.experiment_id, contract.EXPERIMENT_KIND, contract.MODEL_TRAINING)
    except STORE_ERRORS as e:
        raise TrackingError(f"cannot use MLflow store {redact(uri)}: {_first_line(e)}") from None
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"tracking.experiment={name!r} is deleted in {redact(uri)}: restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another name"
        )
    return client, experiment.experiment_id


def check_writable(db: Path) -> None:
    """A SQLite store needs its folder (for its journal) and its file writable; MLflow would find
    out after minutes of retries."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(f"cannot create the MLflow store's folder {db.parent}: {e.strerror}") from None
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise TrackingError(f"the MLflow store {db} is read-only: choose a writable place with "
                            "tracking.uri=sqlite:////abs/path/mlflow.db (or paths.runs=DIR)")


def bound_http_retries(timeout: float) -> None:
    """MLflow reads these at each request: a few seconds per attempt, two retries."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(timeout / 4)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "2"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"


def _check_server(uri: str) -> None:
    """Fail in seconds with one line, rather than after MLflow's minutes of retries."""
    url = urllib.parse.urlsplit(uri)
    request = urllib.request.Request(url._replace(netloc=url.hostname + (f":{url.port}" if url.port else ""),
                                                  path=url.path.rstrip("/") + "/health").geturl())
    if url.username:  # credentials in the URI: basic auth, as MLflow sends them
        token = base64.b64encode(f"{url.username}:{url.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError as e:
        raise TrackingError(
            f"no MLflow server answers at tracking.uri={redact(uri)} ({e}): start one with "
            "`mlflow server --host 127.0.0.1 --port PORT --backend-store-uri sqlite:////abs/path/mlflow.db`"
        ) from None


def _first_line(error: BaseException) -> str:
    """The error's first line; for a server that did not answer, the cause in a few words, not
    urllib3's nested report of every retry."""
    text = str(error)
    if "Max retries exceeded" in text or isinstance(error, RequestException):
        cause = re.search(r"\b(Read timed out|Connection refused|Connection reset|Name or service not known|"
                          r"Connection aborted|RemoteDisconnected)", text)
        return f"the server did not answer ({cause.group(1) if cause else type(error).__name__})"
    lines = text.strip().splitlines()
    return redact(lines[0] if lines else type(error).__name__)


# ---------------------------------------------------------------- run metadata


def flatten(cfg) -> dict:
    """The resolved config as {"model.depth": "20", ...}, without instantiate's `_partial_` flags."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key != "_partial_":
                flat[f"{prefix}{key}"] = redact(str(value))

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
    threads = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads > 1 else ''})"


def cpu_model() -> str:
    """`Intel(R) Xeon(R) Processor` where Linux says it: a timing means little without the CPU
    (with or without bf16 units, a net trains 3x apart); else the architecture."""
    try:
        with open("/proc/cpuinfo") as info:
            models = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        models = []
    return models[0] if models else platform.processor() or platform.machine()


def _error_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)}"[:5000]


# ---------------------------------------------------------------- one job

SHORT_KEYS = {"model.depth": "d", "trainer.seed": "s", "model.width": "w", "model.dropout": "drop",
              "model.block_dropout": "bdrop", "optim.weight_decay": "wd", "optim.lr": "lr",
              "trainer.batch_size": "b", "trainer.epochs": "ep"}
SHORT_FLAGS = {"model.residual": ("res", "plain"), "model.batchnorm": ("bn", "nobn")}


def job_name(overrides: list, swept: list) -> str:
    """A sweep job's run name: its values of the swept axes, shortened (short_name)."""
    return short_name([o for o in overrides if o.split("=", 1)[0].lstrip("+") in swept]) or "default"


def short_name(overrides: list) -> str:
    """A job's run name from its swept overrides, what a runs table has room for:
    model.depth=56 model.residual=false model.batchnorm=true -> `d56 plain bn`; a group's
    choice is its name (optim=adam -> `adam`), a word is itself, any other number `key=value`."""
    parts = []
    for override in overrides:
        key, value = override.lstrip("+").split("=", 1)
        if key in SHORT_FLAGS:
            parts.append(SHORT_FLAGS[key][0 if BooleanNode(value=value)._value() else 1])  # as the schema reads it
        elif key in SHORT_KEYS:
            parts.append(SHORT_KEYS[key] + value)
        elif "." not in key or value.replace("_", "").isalpha():
            parts.append(value)
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts)


class JobRun:
    """The MLflow run of one job: params and tags up front, metrics in batches, always ended."""

    def __init__(self, client, run_id, journal: Path | None = None):
        self.client, self.run_id = client, run_id
        self.metrics = MetricBuffer(client, run_id, journal)

    @classmethod
    def create(cls, client, experiment_id, cfg, job, parent: dict | None = None) -> "JobRun":
        """parent: the sweep's parent run (harness.jobs.sweep.read_parent), for a job of a sweep."""
        all_tags = {contract.OVERRIDES: redact(" ".join(job.overrides)), "torch_version": torch.__version__,
                    **git_state(Path(cfg.paths.root)), **this_process(),
                    **{contract.choice_tag(group): choice for group, choice in job.choices.items()}}
        name = "default" if not job.overrides else " ".join(job.overrides)
        if parent is not None:
            name = job_name(job.overrides, parent["swept"])
            all_tags.update({contract.PARENT: parent["run_id"], contract.SWEEP_ID: parent["sweep_id"],
                             contract.JOB_NUM: str(job.num)})
        all_tags[contract.RUN_NAME] = redact(name)[:250]
        all_tags = {key: str(value) for key, value in all_tags.items()}  # the REST API takes strings only
        run = client.create_run(experiment_id, tags=all_tags, run_name=all_tags[contract.RUN_NAME])
        job_run = cls(client, run.info.run_id, job.output_dir)
        job_run.log_params(flatten(cfg))
        return job_run

    @classmethod
    def reopen(cls, client, run_id: str, job) -> "JobRun":
        """Continue a job's run (a resumed job): RUNNING again, the new process in its tags;
        metrics the journal kept are sent first."""
        job_run = cls(client, run_id, job.output_dir)
        client.update_run(run_id, status="RUNNING")
        forget_interruption(client, run_id, {**this_process(), contract.OUTCOME: Outcome.RUNNING})
        job_run.metrics.send_kept()
        return job_run

    def log_params(self, params: dict) -> None:
        """MlflowClient.log_batch splits them into requests the store accepts."""
        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in params.items()], synchronous=True)

    def set_tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_artifacts(self, job, cfg, model=None) -> None:
        """Resolved config, Hydra's .hydra/ folder, the job log and the model weights (credentials
        in a tracking URI are left out of every file)."""
        write_atomically(job.output_dir / "config_resolved.yaml", redact(OmegaConf.to_yaml(cfg, resolve=True)))
        self.client.log_artifact(self.run_id, str(job.output_dir / "config_resolved.yaml"))
        if (job.output_dir / ".hydra").is_dir():
            with tempfile.TemporaryDirectory() as copy:
                for path in (job.output_dir / ".hydra").glob("*.yaml"):
                    (Path(copy) / path.name).write_text(redact(path.read_text()))
                self.client.log_artifacts(self.run_id, copy, "hydra")
        if model is not None:
            weights = job.output_dir / "model_weights.pt"
            save_tensors({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
            self.client.log_artifact(self.run_id, str(weights), "model")
        self.log_job_log(job)

    def log_job_log(self, job) -> None:
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(OSError):  # a full disk: the log is sent as far as it was written
                handler.flush()
        if job.log_file.is_file():
            self.client.log_artifact(self.run_id, str(job.log_file))

    def fail(self, error: BaseException, job) -> None:
        """Record an exception: tag, traceback artifact, FAILED status; KILLED if stopped by a
        signal or Ctrl-C, or by a file it could not write (a full disk is no fault of the job's:
        tag `killed_by` says which file, and `harness.runs resume` continues it once there is
        room). A store that cannot be reached leaves the run as it is."""
        outcome = Outcome.KILLED if isinstance(error, (Interrupted, KeyboardInterrupt, WriteError)) else Outcome.FAILED
        trace = job.output_dir / "traceback.txt"
        try:
            write_atomically(trace, redact("".join(traceback.format_exception(error))))
        except WriteError:
            trace = None  # the disk is full: the error tag still says what happened
        if from_the_store(error):
            return  # the store is what failed: waiting on it again would only add its timeouts
        try:
            with contextlib.suppress(WriteError):  # points it cannot keep are computed again on resume
                self.metrics.flush()
            self.set_tags({contract.ERROR: _error_line(error), contract.OUTCOME: outcome,
                           **({contract.KILLED_BY: str(error)} if isinstance(error, WriteError) else {})})
            if trace:
                self.client.log_artifact(self.run_id, str(trace))
            self.log_job_log(job)
            self.client.set_terminated(self.run_id, outcome.mlflow_status)
        except (TrackingError, *STORE_ERRORS) as e:
            log.error("could not record the run's end in MLflow (%s): `python -m harness.runs stale --fix` "
                      "ends it later", _first_line(e))

    def finish(self, outcome: Outcome, final: dict | None = None) -> None:
        """End the run; its description (top of its page in the UI) gives the headline metrics."""
        self.metrics.flush()
        headline = [f"{key} **{final[key]:.4f}**" for key in contract.HEADLINE if key in (final or {})]
        self.set_tags({contract.OUTCOME: outcome, contract.DIVERGED: str(outcome == Outcome.DIVERGED).lower(),
                       **({contract.NOTE: f"{outcome}: " + ", ".join(headline)} if headline else {})})
        self.client.set_terminated(self.run_id, outcome.mlflow_status)


def end_killed(client, run_id: str, killed_by: str) -> None:
    """End a run KILLED whose own process cannot (it is gone): `killed_by` says who ended it and
    why. A resume continues it."""
    client.set_tag(run_id, contract.OUTCOME, Outcome.KILLED)
    client.set_tag(run_id, contract.KILLED_BY, killed_by)
    client.set_terminated(run_id, Outcome.KILLED.mlflow_status)


INTERRUPTION_TAGS = (contract.ERROR, contract.KILLED_BY)  # what an interrupted attempt left on its run


def forget_interruption(client, run_id: str, tags: dict) -> None:
    """A run that continues (a resumed job or sweep): drop what its interrupted attempt said
    (error, killed_by), so that a run that then finishes does not read as failed; set `tags`
    (this process: host, pid)."""
    present = client.get_run(run_id).data.tags
    for tag in INTERRUPTION_TAGS:
        if tag in present:
            client.delete_tag(run_id, tag)
    client.log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])


SLURM_TAGS = {"slurm_job_id": "SLURM_JOB_ID", "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
              "slurm_array_task_id": "SLURM_ARRAY_TASK_ID", "slurm_node": "SLURMD_NODENAME",
              "slurm_restart_count": "SLURM_RESTART_COUNT"}


def this_process() -> dict:
    """Tags that say which process runs a run (`harness.runs stale` finds runs whose process is
    gone), and on SLURM which job, array task, node and rerun."""
    tags = {"host": socket.gethostname(), "pid": str(os.getpid()), "pid_start": start_time(os.getpid()) or ""}
    return {**tags, **{tag: os.environ[var] for tag, var in SLURM_TAGS.items() if var in os.environ}}


class MetricBuffer:
    """Metrics collected as device tensors or floats and sent in batches at flush points.

    `add` never reads a device tensor (no host-device sync per step); `flush` copies every
    pending tensor to the host in one transfer and hands them all to one log_batch call
    (MLflow splits it into requests of the size its store accepts).

    With a journal folder (the job's), what is sent is first written to `metrics_unsent.jsonl`
    there, and removed once the store has it; `metrics_sent.json` keeps the last step sent of
    each metric. A resumed job re-sends what was kept (the same points: the store drops
    duplicates) and drops the points it computes again up to those steps; a job whose store
    stopped answering leaves the file for `python -m harness.runs sync`.
    """

    UNSENT, SENT = UNSENT_FILE, SENT_FILE

    def __init__(self, client, run_id, journal: Path | None = None):
        self.client, self.run_id, self.journal = client, run_id, journal
        self.pending = []  # (key, value, step, timestamp_ms)
        self.sent = json.loads((journal / self.SENT).read_text()) if journal and (journal / self.SENT).is_file() else {}

    def add(self, step: int, metrics: dict) -> None:
        now = int(time.time() * 1000)
        self.pending.extend((key, value, step, now) for key, value in metrics.items())

    def flush(self, before_sending=None) -> list:
        """Send everything pending that the store does not have yet; return all of it as
        [(key, float value, step)]. `before_sending()` runs once the points are on the host and
        in the journal (the training loop checkpoints there)."""
        rows = self._to_host()
        new = [row for row in rows if row[2] > self.sent.get(row[0], -1)]
        if self.journal and new:
            append(self.journal / self.UNSENT, "".join(json.dumps(row) + "\n" for row in new).encode())
        if before_sending:
            before_sending()
        if new:
            self._send(new)
        return [(k, v, s) for k, v, s, _ in rows]

    def send_kept(self) -> int:
        """Send what an earlier process of this job left in the journal; return how many points."""
        path = self.journal / self.UNSENT
        if not path.is_file():
            return 0
        rows = read_journal(path)
        self._send(rows)
        return len(rows)

    def _to_host(self) -> list:
        if not self.pending:
            return []
        tensors = [v for _, v, _, _ in self.pending if isinstance(v, torch.Tensor)]
        host = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist()) if tensors else None
        rows = [(k, next(host) if isinstance(v, torch.Tensor) else float(v), s, t) for k, v, s, t in self.pending]
        self.pending = []
        return rows

    def _send(self, rows: list) -> None:
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, s, t in rows], synchronous=True)
        except STORE_ERRORS as e:
            kept = f": they are kept in {self.journal / self.UNSENT}" if self.journal else ""
            raise TrackingError(f"the MLflow store did not take {len(rows)} metric points ({_first_line(e)}){kept}; "
                                "`python -m harness.runs sync JOB_FOLDER` sends them later") from None
        if self.journal:
            for key, _, step, _ in rows:
                self.sent[key] = max(step, self.sent.get(key, -1))
            write_atomically(self.journal / self.SENT, json.dumps(self.sent))
            (self.journal / self.UNSENT).unlink(missing_ok=True)


def read_journal(path: Path) -> list:
    """The points in a metric journal, [(key, value, step, timestamp_ms)]. A line that is not a
    whole point is left out with a warning: the last one cut by a full disk or a crash (its
    point was never sent, and the resumed job computes it again), or one damaged elsewhere."""
    lines = path.read_bytes().split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            key, value, step, timestamp = json.loads(line)
            rows.append((str(key), float(value), int(step), int(timestamp)))
        except (ValueError, TypeError):  # not JSON, not UTF-8, or not [key, value, step, timestamp]
            cut = number == len(lines)  # no newline after it: its write did not finish
            log.warning("%s line %d: %s, left out: %.80r", path, number,
                        "cut short" if cut else "not a metric point", line)
    return rows
