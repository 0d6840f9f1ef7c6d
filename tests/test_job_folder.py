"""A job's folder read and written through one type, and the layers kept apart: what tracks
runs or ends a sweep does not import the training loop, and harness.runs not the Hydra app."""

import subprocess
import sys

import pytest

from harness.jobs.folder import JobFolder, JobRecord
from harness.jobs.outcome import Outcome

from conftest import PROJECT_ROOT


def test_job_json_round_trips_with_the_store_that_has_its_run(tmp_path):
    folder = JobFolder(tmp_path)
    record = JobRecord(tmp_path.parent, 3, ["model.depth=8"], "abc123", "sqlite:///x.db", "exp",
                       {"config_sha256": "f00", "git_commit": "c0ffee", "git_dirty": "false"})
    folder.write(record)
    assert folder.has_record() and folder.read() == record


def test_a_job_json_from_before_the_store_was_recorded_reads_without_it(tmp_path):
    (tmp_path / "job.json").write_text('{"sweep_dir": null, "num": 0, "overrides": [], "run_id": null}')
    assert JobFolder(tmp_path).read() == JobRecord(None, 0, [])


def test_an_outcome_is_its_word_in_the_folder_and_none_before_it_ends(tmp_path):
    folder = JobFolder(tmp_path)
    assert folder.outcome() is None
    folder.write_outcome(Outcome.DIVERGED)
    assert (tmp_path / "outcome.txt").read_text() == "diverged"
    assert folder.outcome() is Outcome.DIVERGED and folder.outcome().done
    assert Outcome.DIVERGED.mlflow_status == "FINISHED" and Outcome.KILLED.mlflow_status == "KILLED"


@pytest.mark.parametrize("module, kept_out", [
    ("harness.tracking.store", ("harness.jobs.checkpoint", "harness.training.train")),
    ("harness.jobs.sweep", ("harness.jobs.checkpoint", "harness.training.train")),
    ("harness.runs", ("harness.app", "harness.training.train")),
])
def test_a_layer_does_not_import_what_it_has_no_business_with(module, kept_out):
    imported = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(' '.join(m for m in {kept_out!r} if m in sys.modules))"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert imported.stdout.strip() == ""
