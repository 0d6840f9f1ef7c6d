"""Beyond one machine: sweeps on a real SLURM (started here, one node) through Hydra's submitit
launcher, logging to a real `mlflow server` backed by a real PostgreSQL; a requeued job
resumes, bit for bit; analysis reads the figures back over HTTP."""

import json
import re
import subprocess
import sys

import pytest
import torch
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from cluster import Postgres, Slurm, wait_until
from conftest import (PROJECT_ROOT, SYNTHETIC, local_store, run_cli, run_module, start_mlflow_server,
                      stop_process_group)
from harness import contract

pytestmark = pytest.mark.slow

ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20"]
LAUNCH_TIMEOUT = 600  # without accounting, submitit would wait forever on a job that died without a result


@pytest.fixture(scope="module")
def slurm():
    cluster = Slurm(cpus=8)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    database = Postgres()
    try:
        folder = tmp_path_factory.mktemp("server")
        process, url = start_mlflow_server(folder, backend=database.uri, workers=2)
        try:
            yield url, database.uri
        finally:
            stop_process_group(process)
    finally:
        database.stop()


def sweep(slurm, *args, runs_dir, uri):
    command = [sys.executable, "-m", "harness", "-m", *args, *ON_SLURM, f"paths.runs={runs_dir}", f"tracking.uri={uri}"]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                          env=slurm.env)


def by_kind(client, experiment="harness"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("kind") != "sweep"], [r for r in runs if r.data.tags.get("kind") == "sweep"]


def test_eight_slurm_jobs_log_every_point_through_one_postgres_backed_server(slurm, server, tmp_path):
    server, database = server
    runs_dir = tmp_path / "runs"
    result = sweep(slurm, "model.residual=true,false", "model.batchnorm=true,false", "trainer.seed=0,1",
                   "model.depth=8", *SYNTHETIC, "trainer=smoke", "trainer.steps=8", "probes.grad_norms.every=1",
                   "probes.shift.images=32", "probes.shift.val_images=16", "hydra.launcher.array_parallelism=8",
                   runs_dir=runs_dir, uri=server)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(server)
    jobs, (parent,) = by_kind(client)
    assert len(jobs) == 8 and parent.info.status == "FINISHED" and parent.data.tags["jobs"] == "8"
    assert len({r.data.tags["slurm_array_task_id"] for r in jobs}) == 8
    assert len({r.data.tags["slurm_array_job_id"] for r in jobs}) == 1  # one array, submitted once
    starts, ends = [r.info.start_time for r in jobs], [r.info.end_time for r in jobs]
    assert max(starts) < min(ends)  # all eight ran at once
    for run in jobs:
        tags, folder = run.data.tags, runs_dir / "multirun" / parent.data.tags["sweep_id"] / run.data.tags["job_num"]
        assert run.info.status == "FINISHED" and tags["slurm_node"] and tags["slurm_job_id"]
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        # every point, against the job's own schedule (8 steps, a point every 4; grad norms at every step)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [4, 8]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "weights/grad_norm/000_stem.conv")] == list(range(8))
        layers = sum(1 for key in run.data.metrics if key.startswith("weights/grad_norm/0"))
        assert layers == (15 if run.data.params["model.batchnorm"] == "True" else 8)  # 7 convs (and their BN), fc
        # and against the job's folder: its log's final line is what the server holds
        logged = re.search(r"test: loss ([\d.]+), accuracy ([\d.]+)", (folder / "harness.log").read_text())
        assert float(logged[1]) == pytest.approx(run.data.metrics["test/loss"], abs=5e-5)
        assert float(logged[2]) == pytest.approx(run.data.metrics["test/acc"], abs=5e-5)
        # every metric the job sent, up to the last step it recorded sending (metrics_sent.json),
        # read from the PostgreSQL tables themselves: no step twice, none beyond
        sent = json.loads((folder / "metrics_sent.json").read_text())
        stored = {key: (points, steps, last) for key, points, steps, last in rows(
            database, "select key, count(*), count(distinct step), max(step) from metrics where run_uuid = :run "
                      "group by key", run=run.info.run_id)}
        assert stored.keys() == sent.keys() == run.data.metrics.keys()
        assert all(stored[key][0] == stored[key][1] and stored[key][2] == last for key, last in sent.items())
        per_layer = [key for key in stored if key.startswith("weights/grad_norm/")]
        assert per_layer and all(stored[key][0] == stored[key][2] + 1 for key in per_layer)  # probed every step

    report = tmp_path / "report"
    analysis = run_module("analysis", "--uri", server, "--out", str(report), timeout=300)
    assert analysis.returncode == 0, analysis.stderr
    assert (report / "1_training_curves.png").is_file() and "## Gradient flow" in (report / "index.md").read_text()
    assert "report/index.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


SMALL = [*SYNTHETIC, "data.train_size=4608", "data.val_size=512", "data.test_size=256",
         "model.depth=8", "trainer.batch_size=32", "trainer.epochs=2", "trainer.log_every=8", "trainer.precision=fp32",
         "trainer.device=cpu", "trainer.threads=2", "probes.shift.images=32", "probes.shift.val_images=16"]


@pytest.fixture(scope="module")
def never_requeued(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("reference") / "runs"
    result = run_cli("-m", *SMALL, runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    uri = local_store(runs_dir)
    client = MlflowClient(uri)
    (run,) = [r for r in client.search_runs(["1"]) if r.data.tags.get("kind") != "sweep"]
    return uri, client, run


@pytest.mark.parametrize("how, signal_name", [
    (("scontrol", "requeue"), "SIGTERM"),  # SLURM requeues (or preempts): submitit ignores SIGTERM
    (("scancel", "--signal=USR2"), "SIGUSR2"),  # submitit's warning before a time limit: it requeues
], ids=["scontrol requeue", "SIGUSR2"])
def test_a_requeued_slurm_job_resumes_from_its_checkpoint_bit_identical(slurm, never_requeued, tmp_path, how,
                                                                         signal_name):
    """The job checkpoints mid-epoch, SLURM reruns it, and the rerun continues the same run,
    ending with the weights and metric points of a run never requeued."""
    ref_uri, ref_client, ref_run = never_requeued
    runs_dir = tmp_path / "runs"
    uri = local_store(runs_dir)  # one node: a SQLite file will do
    command = [sys.executable, "-m", "harness", "-m", *SMALL, *ON_SLURM, "hydra.launcher.max_num_timeout=1",
               "trainer.progress_every=0.2", f"paths.runs={runs_dir}", f"tracking.uri={uri}"]
    launcher = subprocess.Popen(command, cwd=PROJECT_ROOT, env=slurm.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: 140 < last_step(runs_dir) < 240, 300, "the job well into epoch 2 (steps 129-256)")
        (job_id, _), = slurm.jobs()
        assert slurm.run(*how, job_id).returncode == 0
        output = launcher.communicate(timeout=LAUNCH_TIMEOUT)[0]
    finally:
        launcher.kill()  # a failed wait or assert leaves no launcher polling SLURM behind
    assert launcher.returncode == 0, output[-3000:]

    log = next(runs_dir.glob("multirun/*/*/0/harness.log")).read_text()
    assert f"stopped by {signal_name} at a step boundary" in log
    resumed_at = int(log.split("resuming at step ")[1].split()[0])
    assert 128 < resumed_at < 256  # mid-epoch 2, where it stopped
    client = MlflowClient(uri)
    (run,) = [r for r in client.search_runs(["1"]) if r.data.tags.get("kind") != "sweep"]
    assert run.info.status == "FINISHED" and run.data.tags["slurm_restart_count"] == "1"
    mine, theirs = (torch.load(download_artifacts(run_id=r.info.run_id, artifact_path="model/model_weights.pt",
                                                  tracking_uri=u)) for r, u in ((run, uri), (ref_run, ref_uri)))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert run.data.metrics.keys() == ref_run.data.metrics.keys()
    for key in run.data.metrics:  # every metric's every point, the timings excepted (no rerun repeats them)
        if not key.startswith(contract.TIMINGS):
            assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == \
                [(m.step, m.value) for m in ref_client.get_metric_history(ref_run.info.run_id, key)], key


def rows(database_uri: str, query: str, **params) -> list:
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_uri)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sqlalchemy.text(query), params)]
    finally:
        engine.dispose()


def last_step(runs_dir) -> int:
    """The last training step job 0's progress lines (every 0.2 s) have reached; 0 before any."""
    log = next(iter(runs_dir.glob("multirun/*/*/0/harness.log")), None)
    steps = re.findall(r"step (\d+)/256", log.read_text()) if log else []
    return int(steps[-1]) if steps else 0
