"""`python -m analysis` against a hostile store, report folder or server: each case exits with
its status and at most one line on stderr, writes and deletes nothing outside the report root
(a victim folder with a file in it survives), and never shows a password."""

import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import SYNTHETIC, free_port, run_cli, run_module

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A finished depth sweep (8, 14, 20); each test tampers with its own copy of the database."""
    runs_dir = tmp_path_factory.mktemp("store") / "runs"
    result = run_cli("-m", "model.depth=8,14,20", *SYNTHETIC, "trainer=smoke",
                     "probes.shift.images=64", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    return runs_dir / "mlflow.db"


def sweep_id(value):
    return lambda client, parent, paths: client.set_tag(parent.info.run_id, "sweep_id", value.format(**paths))


def experiment_name(value):
    return lambda client, parent, paths: client.rename_experiment(parent.info.experiment_id, value.format(**paths))


def user_folder(client, parent, paths):
    Path(paths["out"]).mkdir()
    Path(paths["out"], "thesis.tex").write_text("mine")


def read_only(client, parent, paths):
    if os.geteuid() != 0:  # as root a chmod does not stop writes: only a read-only mount does
        pytest.skip("needs root to mount a read-only tmpfs")
    Path(paths["ro"]).mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", paths["ro"]], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")


HOSTILE = [  # (case, what is done to the store or the disk, arguments, exit status, the line says)
    ("sweep id an absolute path", sweep_id("{victim}"), [], 0, None),
    ("sweep id with ../", sweep_id("../../victim"), [], 0, None),
    ("sweep id of 5000 characters", sweep_id("x" * 5000), [], 0, None),
    ("experiment renamed ../../x", experiment_name("../../x"), ["--experiment", "../../x"], 0, None),
    ("experiment renamed to an absolute path", experiment_name("{victim}"), ["--experiment", "{victim}"], 0, None),
    ("--out a user's folder", user_folder, ["--out", "{out}"], 2, "is not a report folder (it has no .harness-report)"),
    ("--out on a read-only mount", read_only, ["--out", "{ro}/report"], 2, "Read-only file system (EROFS)"),
    ("dead server with a password", None, ["--uri", "{dead}"], 1, "the server did not answer (Connection refused)"),
    ("server that never answers", None, ["--uri", "{hanging}", "--timeout", "4"], 1, "the server did not answer"),
]


@pytest.mark.parametrize("case, tamper, args, status, says", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_each_hostile_case_is_one_line_and_touches_nothing_outside_the_report_root(
        case, tamper, args, status, says, store, tmp_path):
    shutil.copy(store, tmp_path / "mlflow.db")
    root = tmp_path / "a" / "reports"  # so ../../x, resolved against it, would land in tmp_path
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("precious")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("precious")
    hanging = socket.create_server(("127.0.0.1", 0), backlog=1)  # accepts connections, never answers
    paths = {"victim": str(tmp_path / "victim"), "out": str(tmp_path / "thesis"), "ro": str(tmp_path / "ro"),
             "dead": f"http://user:{PASSWORD}@127.0.0.1:{free_port()}",
             "hanging": f"http://user:{PASSWORD}@127.0.0.1:{hanging.getsockname()[1]}"}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.kind = 'sweep'")[0]
    try:
        if tamper:
            tamper(client, parent, paths)
        before = _files(tmp_path, root)
        started = time.monotonic()
        result = run_module("analysis", "--uri", uri, "--reports", str(root), *[a.format(**paths) for a in args], timeout=300)
        took = time.monotonic() - started
        after = _files(tmp_path, root)
    finally:
        hanging.close()
        if os.path.ismount(paths["ro"]):
            subprocess.run(["umount", paths["ro"]], check=True)
    assert result.returncode == status, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert after == before  # the victims (and a user's --out) untouched, nothing new beside them
    if status == 0:
        assert result.stderr == ""
        (index,) = root.rglob("index.md")
        assert (index.parent / ".harness-report").is_file() and len(index.parent.name) <= 120
    else:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert says in result.stderr and result.stderr.startswith("error: ")
        assert not root.exists()
    assert took < 120  # unbounded, MLflow retries for 256 s (refused) or far longer (no answer)


def _files(folder: Path, report_root: Path) -> dict:
    """Every file under folder, but the report root and the store, with its bytes."""
    return {p: p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.is_relative_to(report_root) and p.name != "mlflow.db"}


def test_a_report_replaces_its_own_folder_and_no_other(store, tmp_path):
    uri = f"sqlite:///{store}"
    out = tmp_path / "report"
    first = run_module("analysis", "--uri", uri, "--out", str(out), timeout=300)
    assert first.returncode == 0, first.stderr
    (out / "stale.txt").write_text("from an older report")
    again = run_module("analysis", "--uri", uri, "--out", str(out), timeout=300)
    assert again.returncode == 0, again.stderr
    assert not (out / "stale.txt").exists() and (out / "index.md").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no build folder left beside it


def test_a_store_moved_without_its_artifacts_still_reports_and_says_which_figures_it_cannot_draw(store, tmp_path):
    """A database copied from another machine names artifact folders that are not here: the
    per-layer figures need the layer tables, so they are skipped in one line each; the rest is drawn."""
    shutil.copy(store, tmp_path / "mlflow.db")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("UPDATE runs SET artifact_uri = '/nonexistent/elsewhere/' || run_uuid")
    out = tmp_path / "report"
    result = run_module("analysis", "--uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    for figure in ("grad_vs_layer", "grad_heatmap", "first_layer_gradient"):
        assert f"{figure}: skipped: no layer table says which layers are convolutions" in result.stdout
    assert (out / "1_training_curves.png").is_file() and (out / "index.md").is_file()


def test_a_killed_run_does_not_enter_the_figures_captions(store, tmp_path):
    """The d20 job ends KILLED: captions compare depth 14 with depth 8, by the ratio of their
    training loss over the last 10% of steps (and test error), read straight from MLflow."""
    shutil.copy(store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    client.set_terminated(runs["d20"].info.run_id, "KILLED")
    histories = {name: client.get_metric_history(runs[name].info.run_id, "train/loss") for name in ("d8", "d14")}
    window_loss = {name: statistics.mean(m.value for m in points if m.step > 0.9 * max(p.step for p in points))
                   for name, points in histories.items()}  # the claims' quantity: the last 10% of steps
    test_error = {name: 1 - runs[name].data.metrics["test/acc"] for name in ("d8", "d14")}
    out = tmp_path / "report"
    result = run_module("analysis", "--uri", uri, "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    captions = {line.split(":", 1)[0]: line for line in result.stdout.splitlines()}
    assert captions["left out of the figures"] == "left out of the figures: d20 (killed)"
    assert captions["1_training_curves"].endswith(f"residual: depth 14's mean training loss over the last 10% of "
                                                  f"steps is {window_loss['d14'] / window_loss['d8']:#.3g}x depth 8's.")
    assert captions["4_error_vs_depth"].endswith(
        f"residual: depth 14's test error is {test_error['d14'] / test_error['d8']:#.3g}x depth 8's.")
    assert "depth 20" not in result.stdout
    assert "left out: d20 (killed)" in (out / "index.md").read_text()
