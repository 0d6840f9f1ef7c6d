"""Tracking against real stores: a temporary SQLite file, and a real `mlflow server` on
127.0.0.1 whose REST API (what the MLflow UI reads) must show the sweep."""

import json
import urllib.request
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.jobs.job import JobInfo
from harness.tracking.store import JobRun, MetricBuffer, open_experiment, short_name

from conftest import (PROJECT_ROOT, SYNTHETIC, ForkedProcess, chromium, run_cli, run_module,
                      start_mlflow_server, stop_process_group)


@pytest.fixture(scope="module")
def served_sweep(tmp_path_factory):
    """(url, folder, result): a real `mlflow server` and a two-job sweep logged to it, with a user
    and password in tracking.uri."""
    folder = tmp_path_factory.mktemp("server")
    server, url = start_mlflow_server(folder)
    try:
        secret_uri = url.replace("http://", "http://alice:s3cret-pw@")
        result = run_cli("-m", "model.depth=8,14", *SYNTHETIC, "trainer=smoke", runs_dir=folder / "runs", uri=secret_uri)
        yield url, folder, result
    finally:
        stop_process_group(server)


def rest(url, endpoint, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_sweep_through_a_real_mlflow_server(served_sweep, tmp_path):
    """Also: a user and password in tracking.uri reach no param, tag, log line or artifact."""
    mlflow_server, folder, result = served_sweep
    assert result.returncode == 0, result.stderr
    assert "View run" not in result.stdout + result.stderr  # MLflow prints one per run to a server by default
    assert "s3cret-pw" not in result.stdout + result.stderr
    experiment = rest(mlflow_server, "experiments/get-by-name?experiment_name=harness")["experiment"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("kind") == "sweep"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    children = rest(mlflow_server, "runs/search", {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.`mlflow.parentRunId` = '{parent_id}'"})["runs"]
    depths = sorted(int({p["key"]: p["value"] for p in r["data"]["params"]}["model.depth"]) for r in children)
    assert depths == [8, 14]
    for run in children:
        assert run["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"train/loss", "val/acc", "test/acc", "train/lr"} <= metrics
        listed = rest(mlflow_server, f"artifacts/list?run_id={run['info']['run_id']}")
        assert {"config_resolved.yaml", "model", "harness.log"} <= {f["path"] for f in listed["files"]}
    assert list((folder / "server-artifacts").rglob("model_weights.pt"))  # uploaded through the server
    for run in runs:
        values = [p["value"] for p in run["data"].get("params", [])] + [t["value"] for t in run["data"].get("tags", [])]
        assert not any("s3cret-pw" in v for v in values)
    assert "alice:***@" in {p["key"]: p["value"] for p in children[0]["data"]["params"]}["tracking.uri"]
    stored = [path.read_bytes() for path in (folder / "server-artifacts").rglob("*") if path.is_file()]
    assert len(stored) > 10 and not any(b"s3cret-pw" in data for data in stored)

    # the report reads histories through the REST API and uploads itself to the parent run
    report = run_module("analysis", "--uri", mlflow_server, "--out", str(tmp_path / "report"), timeout=300)
    assert report.returncode == 0, report.stderr
    summary = (tmp_path / "report" / "summary.csv").read_text()
    for run in children:
        test_acc = next(m["value"] for m in run["data"]["metrics"] if m["key"] == "test/acc")
        assert repr(test_acc) in summary or str(test_acc) in summary
    listed = rest(mlflow_server, f"artifacts/list?run_id={parent_id}&path=report")
    assert "report/index.md" in {f["path"] for f in listed["files"]}


def test_a_jobs_model_metrics_tab_opens_on_its_headline_curves_in_a_browser(served_sweep):
    """The MLflow UI, in a real browser, orders a run's metric sections itself (alphabetically):
    the metrics are named so that test, train and val come before the per-layer curves."""
    url, _, result = served_sweep
    assert result.returncode == 0, result.stderr
    experiment = rest(url, "experiments/get-by-name?experiment_name=harness")["experiment"]["experiment_id"]
    runs = rest(url, "runs/search", {"experiment_ids": [experiment], "filter": "tags.job_num = '0'"})["runs"]
    sync_playwright, chromium_path = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 850})
        page.goto(f"{url}/#/experiments/{experiment}/runs/{runs[0]['info']['run_id']}/model-metrics"
                  "?workflowType=machine_learning")
        page.get_by_text("weights/grad_norm", exact=True).wait_for(timeout=90_000)  # the last section
        sections = page.evaluate("""() => [...new Set(Array.from(document.querySelectorAll('div'))
            .map(d => d.textContent.trim()).filter(t => /^[a-z_\\/]+\\(\\d+\\)$/.test(t)))]""")
        first_chart = page.get_by_text("acc", exact=True).first.bounding_box()
        browser.close()
    assert [name.split("(")[0] for name in sections] == ["test", "train", "val", "weights/grad_norm"], sections
    assert first_chart["y"] < 850  # test/acc is on the first screen


def test_fresh_sqlite_store_opened_by_many_processes_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh.db"
    processes = [ForkedProcess("tests.store_clients", "open", uri) for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), [out[-500:] for out in outputs]
    ids = [[line for line in out.splitlines() if line.isdigit()] for out in outputs]  # beside MLflow's log lines
    assert all(len(found) == 1 for found in ids) and len({found[0] for found in ids}) == 1  # all found the same experiment


def test_failed_job_records_error_traceback_and_status(tmp_path):
    client, experiment_id = open_experiment(f"sqlite:///{tmp_path}/t.db", "failures")
    cfg = OmegaConf.create({"paths": {"root": str(PROJECT_ROOT)}, "model": {"depth": 8},
                            "tracking": {"uri": f"sqlite:///{tmp_path}/t.db", "experiment": "failures"}})
    job = JobInfo(output_dir=tmp_path, log_file=tmp_path / "harness.log", sweep_dir=None, num=0, overrides=[])
    run = JobRun.create(client, experiment_id, cfg, job)
    run.metrics.add(1, {"train/loss": torch.tensor(2.5)})
    try:
        raise RuntimeError("CUDA out of memory (simulated)\nsecond line")
    except RuntimeError as e:
        run.fail(e, job)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert stored.data.params["model.depth"] == "8"
    assert stored.data.metrics["train/loss"] == 2.5  # pending metrics were not lost
    trace = Path(client.download_artifacts(run.run_id, "traceback.txt", str(tmp_path / "dl"))).read_text()
    assert "Traceback" in trace and "second line" in trace


def test_metric_buffer_sends_everything_in_batches(tmp_path):
    client, experiment_id = open_experiment(f"sqlite:///{tmp_path}/m.db", "metrics")
    run_id = client.create_run(experiment_id).info.run_id
    buffer = MetricBuffer(client, run_id)
    for step in range(1, 1301):  # 2,600 points: three log_batch calls
        buffer.add(step, {"a": torch.tensor(float(step)), "b": step / 2})
    flushed = buffer.flush()
    assert len(flushed) == 2600 and buffer.pending == []
    history = client.get_metric_history(run_id, "a")
    assert [m.step for m in history] == list(range(1, 1301))
    assert [m.value for m in history] == [float(s) for s in range(1, 1301)]
    assert client.get_metric_history(run_id, "b")[-1].value == 650.0


def test_concurrent_writers_to_one_sqlite_store_lose_nothing(tmp_path):
    """Parallel sweep jobs (hydra/launcher=joblib) write to one SQLite file at once."""
    uri = f"sqlite:///{tmp_path}/shared.db"
    writers = [ForkedProcess("tests.store_clients", "write", uri, str(k)) for k in range(4)]
    outputs = [w.communicate(timeout=300)[0] for w in writers]
    assert all(w.returncode == 0 for w in writers), [out[-800:] for out in outputs]
    client, experiment_id = open_experiment(uri, "concurrent")
    runs = client.search_runs([experiment_id])
    assert sorted(r.data.tags["writer"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "x")
        assert sorted(m.step for m in history) == list(range(10_000))
        assert all(m.value == m.step for m in history)


def test_experiments_open_in_the_model_training_view_even_if_made_before(tmp_path):
    from mlflow.tracking import MlflowClient

    from conftest import local_store

    uri = local_store(tmp_path)
    old = MlflowClient(uri).create_experiment("made-before", artifact_location=(tmp_path / "a").as_uri())
    client, experiment_id = open_experiment(uri, "made-before")
    assert experiment_id == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(old, "mlflow.experimentKind", "genai_development")  # a user's own choice stays
    open_experiment(uri, "made-before")
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "genai_development"


def test_the_store_benchmark_reports_the_points_the_store_holds(tmp_path):
    """harness.bench_store's rate, times its seconds, is what an independent count of the
    store's metric rows finds."""
    import sqlite3

    db = tmp_path / "bench.db"
    result = run_module("harness.bench_store", "--uri", f"sqlite:///{db}", "--writers", "2", "--seconds", "1",
                        "--batch", "200")
    assert result.returncode == 0, result.stderr
    writers, rate = result.stdout.strip().splitlines()[-1].split()[:2]
    with sqlite3.connect(db) as connection:
        (stored,) = connection.execute("select count(*) from metrics").fetchone()
        (runs,) = connection.execute("select count(*) from runs where status = 'FINISHED'").fetchone()
    assert (writers, runs) == ("2", 2) and stored == int(rate.replace(",", "")) and stored % 200 == 0


def test_run_names_read_booleans_as_the_config_schema_does():
    """`model.residual=y` trains a residual net (OmegaConf reads y as true): its name must say so."""
    assert short_name(["model.depth=56", "model.residual=y", "model.batchnorm=off"]) == "d56 res nobn"
    assert short_name(["model.residual=N", "model.batchnorm=1", "optim=adam"]) == "plain bn adam"
