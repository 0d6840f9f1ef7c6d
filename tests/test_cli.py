"""The real CLI in a subprocess against a real (temporary) SQLite MLflow store."""

import csv
import io
import json
import math
import os

import numpy as np
import pytest
import yaml
from mlflow.artifacts import download_artifacts
from PIL import Image

from conftest import (PROJECT_ROOT, SYNTHETIC, ForkedProcess, all_runs, recompute_test_metrics, run_cli,
                      run_module)

SMOKE = [*SYNTHETIC, "trainer=smoke"]


def children_of(runs, parent):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_depth_sweep_logs_one_parent_and_its_jobs(runs_dir):
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    # MLFLOW_RUN_ID would make mlflow.start_run resume one run for every job; it must not matter
    result = run_cli("-m", "model.depth=8,20", *SMOKE, "trainer.precision=fp32", runs_dir=runs_dir,
                     env={"MLFLOW_RUN_ID": "0" * 32})
    assert result.returncode == 0, result.stderr
    assert "View run" not in result.stdout

    client, runs = all_runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs"] == "2"
    jobs = sorted(children_of(runs, parent), key=lambda r: int(r.data.params["model.depth"]))
    assert len(runs) == 3 and [r.data.params["model.depth"] for r in jobs] == ["8", "20"]
    # names a runs table has room for: the sweep's time and id, each job's swept values
    assert parent.info.run_name == "sweep " + parent.data.tags["sweep_id"].split("/")[1]
    assert [r.info.run_name for r in jobs] == ["d8", "d20"]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    for k, run in enumerate(jobs, 1):  # what is happening, as it happens, in the job's log
        assert f"job {k}/2 d{run.data.params['model.depth']}: final test on 1,024 images" in result.stderr
        for line in ("training 12 steps (1 epoch of ", "epoch 1/1 step 12: ", "test: loss "):  # whose line
            assert f"job {k}/2 d{run.data.params['model.depth']}: {line}" in result.stderr
        assert run.data.tags["mlflow.note.content"].startswith(f"finished: train/loss **{run.data.metrics['train/loss']:.4f}**")
    # the parent's table of jobs: swept values and headline metrics, as the UI shows it
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "jobs_table.json")).read())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(row["run"], row["model.depth"], row["test/acc"]) for row in rows] == [
        (run.info.run_name, run.data.params["model.depth"], run.data.metrics["test/acc"]) for run in jobs]
    # the parent is the sweep's page: what was swept and how it went, shared settings, best and worst
    accuracies = [run.data.metrics["test/acc"] for run in jobs]
    assert parent.data.metrics["jobs_max/test/acc"] == max(accuracies)
    assert parent.data.metrics["jobs_min/test/acc"] == min(accuracies)
    assert parent.data.params["swept.model.depth"] == "8,20" and "model.depth" not in parent.data.params
    assert parent.data.params["trainer.steps"] == "12" and parent.data.params["trainer.precision"] == "fp32"
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"Sweep {parent.data.tags['sweep_id']}: 2 jobs (2 finished) over model.depth = 8, 20, "
                           "on Synthetic data. ")
    assert f"Test accuracy from {min(accuracies):.4f} to {max(accuracies):.4f}." in note

    for num, run in enumerate(jobs):
        params, tags = run.data.params, run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["choice.data"] == "synthetic" and tags["choice.optim"] == "momentum" and tags["classes"] == "8"
        assert params["optim._target_"] == "torch.optim.SGD" and params["optim.momentum"] == "0.9"
        assert tags["sweep_id"] == parent.data.tags["sweep_id"] and tags["job_num"] == str(num)
        assert f"model.depth={params['model.depth']}" in tags["overrides"]
        for key in ("git_commit", "host", "device", "torch_version"):
            assert tags[key]
        assert tags["diverged"] == "false"

        steps, log_every = int(params["trainer.steps"]), int(params["trainer.log_every"])
        expected_train_steps = list(range(log_every, steps + 1, log_every))  # smoke: one epoch
        if steps % log_every:
            expected_train_steps.append(steps)  # the epoch's end is a log point too
        for key in ("train/loss", "train/acc", "train/lr"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == expected_train_steps, key
        for key in ("val/loss", "val/acc", "test/loss", "test/acc", "train/images_per_sec", "train/epoch_time_s"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [steps], key

        check_probe_metrics(uri, client, run, steps)

        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config_resolved.yaml", "hydra", "harness.log", "model", "layers.csv", "shift_accuracy.csv"} <= artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "hydra")} >= {
            "hydra/config.yaml", "hydra/hydra.yaml", "hydra/overrides.yaml"}
        # artifacts sit beside the database, not under the working directory
        assert run.info.artifact_uri.startswith((runs_dir / "artifacts").as_uri())
    assert not (PROJECT_ROOT / "mlruns").exists()

    check_test_accuracy_independently(uri, jobs[0])


def check_probe_metrics(uri, client, run, steps):
    """Per-layer metrics under the names layers.csv lists, from step 0; shift scores and curve."""
    table = open(download_artifacts(run_id=run.info.run_id, artifact_path="layers.csv", tracking_uri=uri)).read()
    layers = list(csv.DictReader(io.StringIO(table)))
    depth = int(run.data.params["model.depth"])
    assert len(layers) == 2 * (depth - 1) + 1  # each conv and its BN, then the classifier
    assert layers[0]["metric"] == "000_stem.conv" and layers[-1]["metric"] == f"{len(layers) - 1:03d}_fc"
    assert [row["module"] for row in layers[:3]] == ["Conv2d", "BatchNorm2d", "Conv2d"]
    for row in layers:
        assert f"weights/grad_norm/{row['metric']}" in run.data.metrics
    dense = int(run.data.params["probes.grad_norms.dense"])
    history = client.get_metric_history(run.info.run_id, "weights/grad_norm/000_stem.conv")
    assert [m.step for m in history] == list(range(min(dense, steps)))  # step 0 = the initialisation
    for split in ("val", "test"):
        for name in ("shift_consistency", "shift_consistency_se", "shift_instability_1px", "shift_prob_change_1px"):
            assert 0 <= run.data.metrics[f"{split}/{name}"] <= 1
    max_shift = int(run.data.params["probes.shift.max"])
    curve = client.get_metric_history(run.info.run_id, "test/acc_at_shift")
    assert [m.step for m in curve] == list(range(2 * max_shift + 1))


def check_test_accuracy_independently(uri, run):
    """The logged test metrics of an fp32 run equal a plain fp32 recomputation from its weights."""
    accuracy, loss = recompute_test_metrics(uri, run)
    assert run.data.metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert run.data.metrics["test/loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("args, named", [
    (["model.depth=21"], "model.depth=21"),
    (["optim=foo"], "optim=foo"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["data=cifar10", "data.download=false", "data.root=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["data=imagefolder", "data.root=/nonexistent/images"], "/nonexistent/images"),
])
def test_bad_input_is_one_line_and_writes_no_run(runs_dir, args, named):
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    result = run_cli("data=synthetic", "trainer=smoke", *args, runs_dir=runs_dir, timeout=120)  # args may change data
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    _, runs = all_runs(uri) if (runs_dir / "mlflow.db").exists() else (None, [])
    assert runs == []


def test_failed_and_diverged_jobs_do_not_stop_the_sweep(runs_dir):
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    result = run_cli("-m", "model.depth=8,21", "optim.lr=0.05,1e12", "optim=sgd", "model.batchnorm=false",
                     *SMOKE, runs_dir=runs_dir)
    assert result.returncode == 1  # failures are reported by the exit status
    assert "4 jobs, 2 failed, 0 killed, 1 diverged" in result.stdout + result.stderr
    assert f"browse it: mlflow ui --backend-store-uri {uri} --workers 1, then http://127.0.0.1:5000/#/experiments/" \
           in result.stdout + result.stderr  # one worker: the UI answers in seconds on a small machine

    _, runs = all_runs(uri)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["jobs_failed"] == "2" and parent.data.tags["jobs_diverged"] == "1"
    jobs = {(r.data.params["model.depth"], r.data.params["optim.lr"]): r for r in children_of(runs, parent)}
    assert len(jobs) == 4
    for lr in ("0.05", "1000000000000.0"):
        failed = jobs[("21", lr)]
        assert failed.info.status == "FAILED" and "model.depth=21" in failed.data.tags["error"]
    healthy, diverged = jobs[("8", "0.05")], jobs[("8", "1000000000000.0")]
    assert healthy.info.status == "FINISHED" and healthy.data.tags["diverged"] == "false"
    assert diverged.info.status == "FINISHED" and diverged.data.tags["diverged"] == "true"
    assert not math.isfinite(diverged.data.metrics["train/loss"])
    assert "test/acc" in healthy.data.metrics and "test/acc" not in diverged.data.metrics
    assert all(r.info.status != "RUNNING" for r in runs)


def test_hydra_cli_basics():
    def harness(*args):
        return run_module("harness", *args, timeout=60)

    help_text = harness("--help").stdout
    assert "optim: adam, adamw, fast, he2016, momentum, nesterov, rmsprop, sgd" in help_text
    job = yaml.safe_load(harness("--cfg", "job", "model.depth=56", "optim=adam").stdout)
    assert job["model"]["depth"] == 56 and job["optim"]["_target_"] == "torch.optim.Adam"
    assert "Hydra" in harness("--info").stdout


def test_two_sweeps_started_together_get_separate_folders():
    processes = [ForkedProcess("harness", "--cfg", "all", "--resolve") for _ in range(2)]
    dirs = [yaml.safe_load(p.communicate(timeout=60)[0])["hydra"]["sweep"]["dir"] for p in processes]
    assert dirs[0] != dirs[1]
    assert all(d.startswith(str(PROJECT_ROOT / "runs" / "multirun")) for d in dirs)


@pytest.mark.parametrize("preset, axes", [
    ("depth_residual", {"model.depth": "8,20,56", "model.residual": "true,false", "trainer.seed": "0,1,2"}),
    ("batchnorm", {"model.batchnorm": "true,false", "model.residual": "true,false", "trainer.seed": "0,1,2"}),
    ("vanishing", {"model.depth": "8,20,56", "model.residual": "true,false", "model.batchnorm": "true,false",
                   "trainer.seed": "0,1,2"}),
    ("optimizers", {"optim": "sgd,momentum,rmsprop,adam", "trainer.seed": "0,1,2"}),
    ("augmentation", {"augment": "none,flip,crop,crop_flip", "trainer.seed": "0,1,2"}),
    ("[optimizers,seeds]", {"optim": "sgd,momentum,rmsprop,adam", "trainer.seed": "0,1,2"}),
    ("downsampling", {"model.downsample": "stride,maxpool,avgpool,blurpool", "model.padding": "zeros,circular",
                      "trainer.seed": "0,1,2"}),
    ("invariance", {"augment": "none,crop_flip,jitter,geometric", "trainer.seed": "0,1,2"}),
    ("regularisation", {"model.dropout": "0,0.3", "optim.weight_decay": "0,5e-4", "augment": "crop_flip,jitter",
                        "trainer.seed": "0,1,2"}),
])
def test_study_presets_compose_into_their_sweeps(preset, axes):
    output = run_module("harness", "--cfg", "all", f"+experiment={preset}", "trainer=quick", timeout=60)
    assert output.returncode == 0, output.stderr
    config = yaml.safe_load(output.stdout)
    assert {k: str(v) for k, v in config["hydra"]["sweeper"]["params"].items()} == axes
    assert config["trainer"]["epochs"] == 2  # trainer=quick wins over the preset's trainer
    assert config["tracking"]["experiment"] == preset.strip("[]").split(",")[0]


def test_no_validation_split_trains_on_everything(runs_dir):
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    result = run_cli(*SMOKE, "data.val_size=0", "model.depth=8", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    _, runs = all_runs(uri)
    metrics = runs[0].data.metrics
    assert not any(key.startswith("val/") for key in metrics)  # skipped, not NaN
    assert 0 <= metrics["test/acc"] <= 1 and "test/shift_consistency" in metrics


def test_parallel_sweep_with_the_joblib_launcher(runs_dir):
    """Jobs in worker processes at once: every run complete, under one parent, in one SQLite file."""
    from joblib import cpu_count

    expected_threads = int(os.environ.get("OMP_NUM_THREADS") or max(cpu_count() // 2, 1))  # joblib's rule
    result = run_cli("-m", "model.depth=8,14", "model.residual=true,false", *SMOKE, "trainer.steps=6",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", runs_dir=runs_dir, timeout=600)
    assert result.returncode == 0, result.stderr
    client, runs = all_runs(f"sqlite:///{runs_dir}/mlflow.db")
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs"] == "4"
    jobs = children_of(runs, parent)
    assert sorted((r.data.params["model.depth"], r.data.params["model.residual"]) for r in jobs) == [
        ("14", "False"), ("14", "True"), ("8", "False"), ("8", "True")]
    assert sorted(r.data.tags["job_num"] for r in jobs) == ["0", "1", "2", "3"]
    for run in jobs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [4, 6]
        assert int(run.data.tags["threads"]) == expected_threads  # not 2 jobs x all CPUs


def test_a_class_sorted_grayscale_folder_gets_shift_scores_over_every_class(runs_dir, tmp_path):
    """The holdout habit: a dataset of another size (28x28) and channel count (1), stored class
    by class, as many users' folders are; the shift scores must still see every class."""
    root = tmp_path / "bars"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 48), ("test", 24)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (28, 28), dtype=np.uint8)
                pixels[4 + 5 * c:8 + 5 * c, 6:22] = 220  # a bar whose height says the class
                Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    result = run_cli("data=imagefolder", f"data.root={root}", "data.val_size=0.25", "trainer=smoke", "model.depth=8",
                     "probes.shift.images=40", "probes.shift.val_images=20", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    _, (run,) = all_runs(uri)
    assert run.info.status == "FINISHED" and "test/shift_consistency" in run.data.metrics
    sample = list(csv.DictReader(open(download_artifacts(run_id=run.info.run_id, artifact_path="shift_sample.csv",
                                                         tracking_uri=uri))))
    test_labels = sorted(int(row["label"]) for row in sample if row["split"] == "test")
    assert test_labels == [c for c in range(4) for _ in range(10)]  # 10 of each class, not 40 of the first
    assert {int(row["label"]) for row in sample if row["split"] == "val"} == {0, 1, 2, 3}
    layers = list(csv.DictReader(open(download_artifacts(run_id=run.info.run_id, artifact_path="layers.csv",
                                                         tracking_uri=uri))))
    assert layers[0]["layer"] == "stem.conv" and layers[0]["parameters"] == str(16 * 1 * 3 * 3)  # one input channel
