"""Never lose a run: real signals to the real CLI, resume bit for bit, stale runs, a real
`mlflow server` that dies mid-job, store errors in one line, failed jobs recorded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.artifacts import download_artifacts
from PIL import Image

from conftest import (PROJECT_ROOT, SYNTHETIC, ForkedProcess, all_runs, local_store, run_cli, run_module,
                      start_mlflow_server, stop_process_group)
from harness import contract

pytestmark = pytest.mark.slow

# 128 steps an epoch (4096 training images, batch 32), two epochs, fp32: bit-identical reruns on a CPU
SMALL = [*SYNTHETIC, "data.train_size=4608", "data.val_size=512", "data.test_size=256",
         "model.depth=8", "trainer.batch_size=32", "trainer.epochs=2", "trainer.log_every=8", "trainer.precision=fp32",
         "trainer.device=cpu", "probes.shift.images=32", "probes.shift.val_images=16"]
QUICK = [*SMALL, "data.train_size=2560"]  # 64 steps an epoch
LONG = [*SYNTHETIC, "trainer=smoke", "trainer.steps=100000"]  # stopped by the test


def launch(*args, runs_dir: Path, uri: str | None = None, project: Path = PROJECT_ROOT):
    """`python -m harness ARGS` in the background, in a process group of its own, stdout and
    stderr together; `project`: another copy of the project to run (then with its own interpreter)."""
    args = [*args, f"paths.runs={runs_dir}", f"tracking.uri={uri or local_store(runs_dir)}"]
    if project == PROJECT_ROOT:
        return ForkedProcess("harness", *args)
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=in_project(project))


def harness_runs(*args, timeout=600, project: Path = PROJECT_ROOT):
    if project == PROJECT_ROOT:
        return run_module("harness.runs", *args, timeout=timeout)
    return subprocess.run([sys.executable, "-m", "harness.runs", *args], cwd=project, capture_output=True,
                          text=True, timeout=timeout, env=in_project(project))


def in_project(project: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(project)} if project != PROJECT_ROOT else dict(os.environ)


def wait_for(condition, timeout=120, what="the condition"):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def job_runs(uri):
    client, runs = all_runs(uri)
    return client, [r for r in runs if r.data.tags.get("kind") != "sweep"], [r for r in runs if r.data.tags.get("kind") == "sweep"]


def training(runs_dir, count):
    """`count` jobs have their run (a job writes job.json once its data, model and run exist);
    the store is not read before: reading a SQLite file while it is created races its migration."""
    return lambda: len(list(runs_dir.glob("**/job.json"))) >= count


def histories(client, run):
    """Every metric's (step, value) points, but the timings, which no rerun repeats."""
    return {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics if not key.startswith(contract.TIMINGS)}


def weights(uri, run):
    return torch.load(download_artifacts(run_id=run.info.run_id, artifact_path="model/model_weights.pt", tracking_uri=uri))


# ---------------------------------------------------------------- resume


def reference_run(runs_dir: Path, config: list):
    result = run_cli("-m", *config, runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    client, (run,), _ = job_runs(uri)
    return uri, client, run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return reference_run(tmp_path_factory.mktemp("reference") / "runs", SMALL)


@pytest.fixture(scope="module")
def uninterrupted_quick(tmp_path_factory):
    return reference_run(tmp_path_factory.mktemp("reference_quick") / "runs", QUICK)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_job_stopped_in_epoch_2_resumes_bit_identical(uninterrupted, runs_dir, signum):
    """SIGKILL: the job resumes from the checkpoint of epoch 1. SIGTERM: it checkpoints where it
    stops, mid-epoch, and resumes there. Either way the same weights and metric points as a
    run never stopped, in the same MLflow run."""
    ref_uri, ref_client, reference = uninterrupted
    process = launch("-m", *SMALL, runs_dir=runs_dir)
    checkpoints = lambda: list(runs_dir.glob("multirun/*/*/0/checkpoint.pt"))  # noqa: E731
    wait_for(lambda: checkpoints() or process.poll() is not None, what="the checkpoint of epoch 1")
    time.sleep(1)  # into epoch 2, which takes a few seconds
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == -signum if signum == signal.SIGKILL else 128 + signum, output
    sweep_dir = checkpoints()[0].parents[1]

    uri = f"sqlite:///{runs_dir}/mlflow.db"
    if signum == signal.SIGKILL:
        assert {r.info.status for r in job_runs(uri)[1]} == {"RUNNING"}  # nothing could end it
    resumed = harness_runs("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    log = (sweep_dir / "0" / "harness.log").read_text()
    step = int(log.split("resuming at step ")[1].split()[0])
    assert step == 128 if signum == signal.SIGKILL else 128 < step < 256  # mid-epoch for SIGTERM

    client, (run,), (parent,) = job_runs(uri)
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    # what the interrupted attempt said is gone: a finished run does not read as failed or killed
    assert not {"error", "killed_by"} & (set(run.data.tags) | set(parent.data.tags))
    assert run.data.tags["outcome"] == "finished" and parent.data.tags["outcome"] == "finished"
    mine, theirs = weights(uri, run), weights(ref_uri, reference)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert histories(client, run) == histories(ref_client, reference)
    assert not (sweep_dir / "0" / "checkpoint.pt").exists()  # a finished job keeps none


# ---------------------------------------------------------------- one job runs once, and trains what it recorded


def killed_in_epoch_2(runs_dir: Path, project: Path = PROJECT_ROOT) -> Path:
    """A one-job QUICK sweep SIGKILLed as its epoch-1 checkpoint appears; its folder."""
    process = launch("-m", *QUICK, runs_dir=runs_dir, project=project)
    checkpoints = lambda: list(runs_dir.glob("multirun/*/*/0/checkpoint.pt"))  # noqa: E731
    wait_for(lambda: checkpoints() or process.poll() is not None, timeout=300, what="the checkpoint of epoch 1")
    process.kill()
    process.communicate(timeout=60)
    return checkpoints()[0].parents[1]


def resume_in_background(target: Path):
    command = [sys.executable, "-m", "harness.runs", "resume", str(target)]
    return subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def resumed_training(job: Path):
    return lambda: (job / "harness.log").is_file() and "resuming at step" in (job / "harness.log").read_text()


def test_a_second_resume_of_a_running_job_says_who_holds_it_and_touches_nothing(runs_dir):
    process = launch(*LONG, "model.depth=8", runs_dir=runs_dir)
    wait_for(training(runs_dir, 1), what="training")
    process.kill()
    process.communicate(timeout=60)
    job = next(runs_dir.glob("hydra/*/*"))
    first = resume_in_background(job)
    # the job the first resume relaunched holds the folder (the killed attempt's held_by.txt is left over)
    def held():
        return children(first.pid) and f"pid {children(first.pid)[0]} on " in (job / "held_by.txt").read_text()
    wait_for(held, what="the first resume's job to hold its folder")
    holder = (job / "held_by.txt").read_text()

    second = harness_runs("resume", str(job), timeout=120)
    assert second.returncode == 3 and second.stdout == "", second.stdout + second.stderr
    assert second.stderr.splitlines() == [f"error: job {job} is in use by {holder}: it is still running, not resumed"]
    # the job started again as the resume starts it (a rerun, a requeue) stops before it writes anything
    overrides = json.loads((job / "job.json").read_text())["overrides"]
    again = run_module("harness", *overrides, f"hydra.run.dir={job}", "hydra.output_subdir=null", timeout=120)
    assert again.returncode == 3 and f"is in use by {holder}" in again.stderr, again.stderr
    assert not (job / "outcome.txt").exists()

    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 128 + signal.SIGTERM, output
    client, (run,), _ = job_runs(local_store(runs_dir))
    assert run.info.status == "KILLED" and not (job / "held_by.txt").exists()
    for key, points in histories(client, run).items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), key  # every point once: one process trained it at a time


def test_a_killed_resume_takes_its_job_with_it_and_the_next_finishes_it_bit_identical(uninterrupted_quick, runs_dir):
    ref_uri, ref_client, reference = uninterrupted_quick
    sweep_dir = killed_in_epoch_2(runs_dir)
    resume = resume_in_background(sweep_dir)
    wait_for(resumed_training(sweep_dir / "0"), what="the resumed job training")
    (job_process,) = children(resume.pid)
    resume.kill()
    resume.communicate(timeout=120)  # its output closes once the job has stopped too
    wait_for(lambda: gone(job_process), timeout=60, what="the job to stop")
    assert "stopped by SIGTERM at a step boundary" in (sweep_dir / "0" / "harness.log").read_text()
    uri = local_store(runs_dir)
    _, (run,), _ = job_runs(uri)
    assert (run.info.status, run.data.tags["outcome"]) == ("KILLED", "killed")

    resumed = harness_runs("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    client, (run,), (parent,) = job_runs(uri)
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    mine, theirs = weights(uri, run), weights(ref_uri, reference)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert histories(client, run) == histories(ref_client, reference)


def test_a_resume_after_conf_changed_is_refused_unless_allowed_then_trains_what_the_job_recorded(
        uninterrupted_quick, runs_dir, tmp_path):
    """conf/ is edited in a copy of the project (harness/ and conf/, outside git): the
    checkout's own conf/ stays as it is."""
    ref_uri, ref_client, reference = uninterrupted_quick
    project = tmp_path / "project"
    for part in ("harness", "conf"):
        shutil.copytree(PROJECT_ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    sweep_dir = killed_in_epoch_2(runs_dir, project)
    synthetic = project / "conf" / "data" / "synthetic.yaml"
    synthetic.write_text(synthetic.read_text().replace("\nseed: 0 ", "\nseed: 1 "))
    uri = local_store(runs_dir)
    _, (before,), (parent,) = job_runs(uri)
    checkpoint = (sweep_dir / "0" / "checkpoint.pt").read_bytes()

    refused = harness_runs("resume", str(sweep_dir), project=project)
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error: job {sweep_dir / '0'} changed since it started: data.seed 0 -> 1;")
    assert "--allow-changed" in line
    _, (run,), (parent_now,) = job_runs(uri)
    assert (run.info.status, run.data.tags, parent_now.info.status) == ("RUNNING", before.data.tags, "RUNNING")
    assert (sweep_dir / "0" / "checkpoint.pt").read_bytes() == checkpoint

    allowed = harness_runs("resume", "--allow-changed", str(sweep_dir), project=project)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    client, (run,), (parent,) = job_runs(uri)
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert run.data.tags["resumed_with_changed_config"] == "data.seed 0 -> 1" and run.data.params["data.seed"] == "0"
    mine, theirs = weights(uri, run), weights(ref_uri, reference)  # the recorded data.seed=0, bit for bit
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert histories(client, run) == histories(ref_client, reference)


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_single_run_checkpoints_and_ends_killed(runs_dir, signum):
    process = launch(*LONG, "model.depth=8", runs_dir=runs_dir)
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    wait_for(training(runs_dir, 1), what="training")
    time.sleep(1)
    process.send_signal(signum)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signum, output
    assert f"stopped by {signal.Signals(signum).name} at a step boundary: checkpoint saved" in output
    _, (run,), _ = job_runs(uri)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "killed"
    assert list(runs_dir.glob("hydra/*/*/checkpoint.pt"))


def test_sigkill_leaves_a_stale_run_that_harness_runs_finds_and_ends(runs_dir):
    process = launch(*LONG, "model.depth=8", runs_dir=runs_dir)
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    wait_for(training(runs_dir, 1), what="training")
    process.kill()
    process.communicate(timeout=60)
    listed = harness_runs("stale", "--uri", uri)
    assert listed.returncode == 0 and "stale" in listed.stdout and "1 running, 1 stale" in listed.stdout
    fixed = harness_runs("stale", "--uri", uri, "--fix")
    assert "ended KILLED" in fixed.stdout
    _, (run,), _ = job_runs(uri)
    assert run.info.status == "KILLED" and "stale --fix" in run.data.tags["killed_by"]


def children(pid: int) -> list:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state == "Z"  # a zombie has stopped; only its parent's wait is missing
    except OSError:
        return True


@pytest.mark.parametrize("how", ["SIGTERM to the main process", "Ctrl-C to the process group",
                                 "SIGKILL to the main process"])
def test_a_stopped_joblib_sweep_ends_every_run_and_leaves_no_worker(runs_dir, how):
    process = launch("-m", "model.depth=8,14", *LONG, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     runs_dir=runs_dir)
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    wait_for(training(runs_dir, 2), what="both jobs training")
    time.sleep(1)
    workers = children(process.pid)
    {"SIGTERM to the main process": lambda: process.send_signal(signal.SIGTERM),
     "Ctrl-C to the process group": lambda: os.killpg(process.pid, signal.SIGINT),
     "SIGKILL to the main process": process.kill}[how]()
    process.communicate(timeout=120)
    wait_for(lambda: all(gone(pid) for pid in workers), timeout=60, what="the workers to stop")
    client, jobs, (parent,) = job_runs(uri)
    wait_for(lambda: all(client.get_run(r.info.run_id).info.status == "KILLED" for r in jobs), timeout=30,
             what="every job run KILLED")
    assert len(jobs) == 2 and len(list(runs_dir.glob("multirun/*/*/*/checkpoint.pt"))) == 2
    if how == "SIGKILL to the main process":  # nobody was left to end the parent: stale finds it
        assert process.returncode == -signal.SIGKILL and parent.info.status == "RUNNING"
        assert "1 stale" in harness_runs("stale", "--uri", uri, "--fix").stdout
    else:
        assert process.returncode == (143 if how.startswith("SIGTERM") else 130)
        assert parent.info.status == "KILLED"


def test_a_submitit_job_stopped_without_a_result_is_killed_and_the_sweep_goes_on(runs_dir):
    """hydra-submitit-launcher would stop the sweep at a job that wrote no result (scancel, a
    dead node); here it is recorded as killed and the other jobs finish."""
    process = launch("-m", "data=synthetic", "trainer=smoke", "trainer.steps=100000,12", "model.depth=8",
                     "hydra/launcher=submitit_local", runs_dir=runs_dir)
    # job 0 itself: the two start at once, and under load the short job 1 can be first
    wait_for(lambda: any(runs_dir.glob("multirun/*/*/0/job.json")), what="job 0 training")
    time.sleep(2)
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    _, jobs, _ = job_runs(uri)
    (long_job,) = [r for r in jobs if r.data.tags["job_num"] == "0"]
    os.kill(int(long_job.data.tags["pid"]), signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 1, output
    assert "2 jobs, 0 failed, 1 killed, 0 diverged (python -m harness.runs resume" in output
    _, jobs, (parent,) = job_runs(uri)
    by_num = {r.data.tags["job_num"]: r for r in jobs}
    assert (by_num["0"].info.status, by_num["0"].data.tags["outcome"]) == ("KILLED", "killed")
    assert by_num["1"].info.status == "FINISHED" and parent.info.status == "FAILED"
    assert len(list(runs_dir.glob("multirun/*/*/0/checkpoint.pt"))) == 1


def test_a_finished_job_run_again_in_its_folder_is_not_trained_again(runs_dir):
    """SLURM can rerun a job that finished as a requeue arrived: the rerun must not retrain it
    into the same run (its checkpoint is gone, so it would start over and repeat every point)."""
    assert run_cli("-m", "data=synthetic", "trainer=smoke", "model.depth=8", runs_dir=runs_dir).returncode == 0
    folder = next(runs_dir.glob("multirun/*/*/0"))
    client, (run,), _ = job_runs(local_store(runs_dir))
    before = client.get_metric_history(run.info.run_id, "train/loss")
    again = run_cli("data=synthetic", "trainer=smoke", "model.depth=8", f"hydra.run.dir={folder}", runs_dir=runs_dir)
    assert again.returncode == 0 and "not run again: this job already finished" in again.stderr
    client, (run,), _ = job_runs(local_store(runs_dir))
    assert run.info.status == "FINISHED" and client.get_metric_history(run.info.run_id, "train/loss") == before


# ---------------------------------------------------------------- a tracking server that dies


def test_a_dead_tracking_server_costs_a_job_its_timeout_and_sync_sends_what_it_kept(tmp_path, runs_dir):
    server, url = start_mlflow_server(tmp_path)
    port = url.rsplit(":", 1)[1]
    try:
        started = time.monotonic()
        process = launch(*SMALL, "data.train_size=2560", "trainer.epochs=3", "tracking.timeout=8", runs_dir=runs_dir,
                         uri=url)  # 64 steps an epoch
        from mlflow.tracking import MlflowClient
        client = MlflowClient(url)
        wait_for(lambda: any(r.data.metrics for r in client.search_runs(["1"])), what="the first epoch's metrics")
        first_epoch = time.monotonic() - started  # start-up included: the longest an epoch can take here
        stop_process_group(server, signal.SIGKILL)
        killed = time.monotonic()
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 1, output
        # the job notices at its next flush (the end of the epoch under way), then gives up within
        # tracking.timeout, not after MLflow's minutes of retries; on a loaded machine an epoch is slow
        assert time.monotonic() - killed < first_epoch + 8 + 15, output
        errors = [line for line in output.splitlines() if "error:" in line]
        assert len(errors) == 1 and "the MLflow store did not take" in errors[0] and "harness.runs sync" in errors[0]
        assert "the server did not answer" in errors[0] and len(errors[0]) < 400 and "Retrying" not in output
        job = next(runs_dir.glob("hydra/*/*"))
        kept = [json.loads(line) for line in (job / "metrics_unsent.jsonl").read_text().splitlines()]
        assert kept and (job / "checkpoint.pt").is_file()

        server, _ = start_mlflow_server(tmp_path, int(port))  # the same store comes back
        synced = harness_runs("sync", str(job))
        assert synced.returncode == 0, synced.stderr
        (run,) = client.search_runs(["1"])
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert {(k[2], k[1]) for k in kept if k[0] == "train/loss"} <= {(m.step, m.value) for m in history}
        assert run.info.status == "KILLED" and not (job / "metrics_unsent.jsonl").exists()
        resumed = harness_runs("resume", str(job))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        (run,) = client.search_runs(["1"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert run.info.status == "FINISHED" and steps == sorted(set(steps)) and steps[-1] == 3 * 64
    finally:
        stop_process_group(server)


# ---------------------------------------------------------------- errors: one line, always recorded


def test_a_store_or_runs_folder_that_cannot_be_written_is_one_line(runs_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for args, status in ((["-m", "model.depth=8,14"], 2), (["model.depth=8"], 1)):  # a sweep's parent; a run's store
        started = time.time()
        result = run_cli(*args, *LONG, "trainer.steps=4", runs_dir=runs_dir, uri=f"sqlite:///{blocker}/sub/mlflow.db")
        assert result.returncode == status and time.time() - started < 30
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and "cannot create the MLflow store's folder" in errors[0], result.stderr
        assert "Traceback" not in result.stderr
    result = run_cli(*LONG, "model.depth=8", runs_dir=blocker / "runs", uri=local_store(runs_dir))
    assert result.returncode == 2 and result.stderr.strip().startswith("error: paths.runs=") and "cannot be created" in result.stderr


def test_every_failed_job_of_a_sweep_has_a_failed_run(runs_dir, tmp_path):
    """A bad value, and an image with 196 million pixels: each job fails, each has its run."""
    good, bomb = tmp_path / "good", tmp_path / "bomb"
    for root in (good, bomb):
        for split in ("train", "test"):
            for c in ("a", "b"):
                (root / split / c).mkdir(parents=True)
                for i in range(20):
                    Image.fromarray(np.full((16, 16, 3), 40 * i % 255, np.uint8)).save(root / split / c / f"{i}.png")
    Image.new("L", (14_000, 14_000)).save(bomb / "train" / "a" / "huge.png")
    result = run_cli("-m", f"data.root={good},{bomb}", "optim.momentum=0.9,-1", "data=imagefolder", "trainer=smoke",
                     "model.depth=8", "augment.pad=2", "probes.shift.max=2", runs_dir=runs_dir)
    assert result.returncode == 1
    _, jobs, (parent,) = job_runs(f"sqlite:///{runs_dir}/mlflow.db")
    by_job = {(r.data.params["data.root"], r.data.params["optim.momentum"]): r for r in jobs}
    assert len(by_job) == 4 and by_job[(str(good), "0.9")].info.status == "FINISHED"
    assert "optim.momentum=-1.0" in by_job[(str(good), "-1.0")].data.tags["error"]
    assert "huge.png" in by_job[(str(bomb), "0.9")].data.tags["error"]
    assert all(r.info.status == "FAILED" for key, r in by_job.items() if key != (str(good), "0.9"))
    assert parent.info.status == "FAILED" and parent.data.tags["jobs_failed"] == "3"
