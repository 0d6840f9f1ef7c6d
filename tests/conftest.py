"""Helpers for tests that drive the real CLI against a temporary MLflow store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def run_cli(*args, runs_dir: Path, uri: str | None = None, timeout: int = 300, env: dict | None = None):
    """`python -m harness ARGS` in a subprocess, writing everything under runs_dir."""
    uri = uri or f"sqlite:///{runs_dir}/mlflow.db"
    command = [sys.executable, "-m", "harness", *args, f"paths.runs={runs_dir}", f"tracking.uri={uri}"]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


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
