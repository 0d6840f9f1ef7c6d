"""Helpers for tests that drive the real CLI against a temporary MLflow store."""

import atexit
import contextlib
import functools
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def compose_config(*overrides):
    """The config a job would get from these command-line overrides (schemas registered by harness.app)."""
    import harness.app  # noqa: F401
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@functools.lru_cache(maxsize=1)
def migrated_store() -> Path:
    """An empty MLflow SQLite store with its schema migrated, made once per test session:
    migrating a fresh store costs each CLI call seconds; copying this one costs nothing."""
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="migrated-store-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


# Generated data at 16 pixels, for the tests whose jobs train only to have run: what they check
# does not depend on the image size, and a job trains in a quarter of the time it takes at 32.
SYNTHETIC = ["data=synthetic", "data.image_size=16"]


def local_store(runs_dir: Path) -> str:
    """The URI of runs_dir/mlflow.db, made a copy of the migrated empty store if it is new."""
    if not (runs_dir / "mlflow.db").exists():
        runs_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(migrated_store(), runs_dir / "mlflow.db")
    return f"sqlite:///{runs_dir}/mlflow.db"


def run_cli(*args, runs_dir: Path, uri: str | None = None, timeout: int = 300, env: dict | None = None):
    """`python -m harness ARGS` in a subprocess, writing everything under runs_dir (by default
    into runs_dir/mlflow.db, see local_store)."""
    uri = uri or local_store(runs_dir)
    return run_module("harness", *args, f"paths.runs={runs_dir}", f"tracking.uri={uri}", timeout=timeout, env=env)


def run_module(module: str, *args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the project root with the output captured as text, as
    subprocess.run would give it; run by a child of the fork server (see forkserver.py), which
    has the imports done, unless the environment changes where Python finds the project."""
    env = {**os.environ, **(env or {})}
    if env.get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=timeout, env=env)
    return fork_server().run(module, list(args), env, timeout)


class ForkServer:
    """The client side of tests/forkserver.py: children are started and waited for by id."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "tests" / "forkserver.py")],
                                        cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pending, self.replies, self.ids = b"", {}, itertools.count()
        self.reply(timeout=300)  # ready: its imports are done

    def reply(self, timeout: float | None) -> dict | None:
        """The next reply, or None if none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.process.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the fork server ended (exit status {self.process.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def reply_to(self, request_id: int, key: str, timeout: float | None):
        """The `key` of the reply about request `request_id` (others are kept for later), or None
        if it did not come within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (request_id, key) not in self.replies:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            reply = self.reply(left)
            if reply is None:
                return None
            self.replies[reply["id"], "pid" if "pid" in reply else "returncode"] = reply
        return self.replies.pop((request_id, key))[key]

    def start(self, module: str, args: list, env: dict, stdout: Path, stderr: Path) -> tuple:
        """(request id, pid) of a new child running `python -m MODULE ARGS`."""
        request_id = next(self.ids)
        request = {"id": request_id, "module": module, "args": args, "cwd": str(PROJECT_ROOT), "env": env,
                   "stdout": str(stdout), "stderr": str(stderr)}
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        return request_id, self.reply_to(request_id, "pid", timeout=60)

    def run(self, module: str, args: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", module, *args]
        with tempfile.TemporaryDirectory(prefix="cli-output-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request_id, pid = self.start(module, args, env, out, err)
            returncode = None
            try:
                returncode = self.reply_to(request_id, "returncode", timeout)
            finally:
                if returncode is None:  # a timeout, or the test was interrupted
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    self.reply_to(request_id, "returncode", timeout=60)
            output = out.read_text(), err.read_text()
        if returncode is None:
            raise subprocess.TimeoutExpired(command, timeout, *output)
        return subprocess.CompletedProcess(command, returncode, *output)


class ForkedProcess:
    """`python -m MODULE ARGS` in the background as a child of the fork server, with stdout and
    stderr together as text: what subprocess.Popen(..., stdout=PIPE, stderr=STDOUT, text=True)
    gives the tests that use it (pid, poll, send_signal, kill, communicate, returncode)."""

    def __init__(self, module: str, *args, env: dict | None = None):
        self.args = [sys.executable, "-m", module, *args]
        self.folder = tempfile.TemporaryDirectory(prefix="cli-output-")
        self.output = Path(self.folder.name) / "output"
        self.server = fork_server()
        self.id, self.pid = self.server.start(module, list(args), {**os.environ, **(env or {})}, self.output, self.output)
        self.returncode = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.reply_to(self.id, "returncode", timeout=0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it ended since: as Popen does
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple:
        if self.returncode is None:
            self.returncode = self.server.reply_to(self.id, "returncode", timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        output = self.output.read_text()
        self.folder.cleanup()
        return output, None


@functools.lru_cache(maxsize=1)
def fork_server() -> ForkServer:
    server = ForkServer()
    atexit.register(server.process.kill)
    return server


def chromium():
    """A headless Chromium page factory (playwright driving the system's chromium), or a skip;
    with HARNESS_REQUIRE_BROWSER=1 (CI) a missing browser fails instead."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if path is None or sync_playwright is None:
        why = "needs chromium (apt install chromium) and playwright (pip install playwright)"
        if os.environ.get("HARNESS_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return sync_playwright, path


# The suite's longest files, longest first (worker-seconds in the last full run on 2 cores: 346,
# 191, 122, 111, 110, 99, 56, 48, 47, 45, 25). xdist (-n 2 --dist loadfile --no-loadscope-reorder)
# hands files to its workers in collection order: long ones first leave no worker alone with one
# at the end. (xdist's own order, by number of tests, sent test_cluster's 6 tests, 3 minutes, last.)
LONGEST_FILES = ["test_resilience.py", "test_cluster.py", "test_full_disk.py", "test_tracking.py", "test_mps.py",
                 "test_analysis.py", "test_bench.py", "test_cli.py", "test_hostile_analysis.py", "test_probes.py",
                 "test_progress.py"]


def pytest_configure(config):
    """Under xdist, each worker's jobs get their share of the CPUs (threads=auto reads
    OMP_NUM_THREADS, as in joblib's workers): two workers whose jobs each ran a thread per CPU
    oversubscribed a 2-core machine, and a 24 s benchmark test took 150 s."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))


def pytest_collection_modifyitems(items):
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: each file keeps its order


@pytest.fixture
def runs_dir(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    return path


def all_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments], max_results=1000) if experiments else []


def recompute_test_metrics(uri: str, run) -> tuple:
    """(test accuracy, test loss) of a run's logged weights, by a plain fp32 loop independent of
    the harness's batching and normalisation code."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    import yaml
    from mlflow.artifacts import download_artifacts
    from omegaconf import OmegaConf

    from harness.config import load_data, make_model

    config = OmegaConf.create(yaml.safe_load(open(download_artifacts(
        run_id=run.info.run_id, artifact_path="config_resolved.yaml", tracking_uri=uri))))
    weights = torch.load(download_artifacts(run_id=run.info.run_id, artifact_path="model/model_weights.pt",
                                            tracking_uri=uri))
    splits = load_data(config.data)
    train = splits.train_x.numpy().astype(np.float64) / 255
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    x = (splits.test_x.numpy() / 255 - mean[None, :, None, None]) / std[None, :, None, None]
    model = make_model(config.model, splits.num_classes, splits.in_channels)
    model.load_state_dict(weights)
    with torch.no_grad():
        logits = model.eval()(torch.tensor(x, dtype=torch.float32))
    return (logits.argmax(1) == splits.test_y).double().mean().item(), F.cross_entropy(logits, splits.test_y).item()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int | None = None, backend: str | None = None, workers: int = 1):
    """(process, url) of a real `mlflow server` on 127.0.0.1 with its store (a SQLite file in
    `folder` unless `backend` names another) and artifacts in `folder`, once it answers /health;
    it runs in a process group of its own."""
    port = port or free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--backend-store-uri", backend or f"sqlite:///{folder}/server.db",
               "--artifacts-destination", str(folder / "server-artifacts")]
    with open(folder / "server.log", "a") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return server, url
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                stop_process_group(server)
                pytest.fail("mlflow server did not start:\n" + (folder / "server.log").read_text()[-3000:])
            time.sleep(0.5)


def stop_process_group(process, signum=signal.SIGTERM) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
