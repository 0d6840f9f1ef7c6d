"""Device, precision, layout, compile and thread settings; no host-device sync in a step."""

import os
import shutil
import warnings

import pytest
import torch

from harness.app import build
from harness.training.compute import bf16_supported, resolve_compile, resolve_compute, resolve_precision, resolve_threads
from harness.training.syncs import HostSyncs, cuda_syncs
from harness.tracking.store import MetricBuffer, open_experiment
from harness.training.train import train

from conftest import SYNTHETIC, all_runs, compose_config, recompute_test_metrics, run_cli

CPU = torch.device("cpu")


def cpu_flags() -> set:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    return set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())


def test_auto_precision_follows_the_cpus_bf16_support():
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())  # read independently of torch
    assert bf16_supported(CPU) == has_bf16
    assert resolve_precision("auto", CPU) == ("bf16" if has_bf16 else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_compile_and_thread_settings():
    assert resolve_compile(False, CPU) is None
    assert resolve_compile(True, CPU) == "default"  # CUDA graphs need a GPU
    assert resolve_compile("auto", CPU) is None
    assert resolve_compile("auto", torch.device("cuda")) == "reduce-overhead"  # no GPU needed to resolve
    assert resolve_compile("max-autotune", CPU) == "max-autotune"
    assert resolve_compile("True", CPU) == "default"  # a boolean in the str-typed field
    assert resolve_threads("3") == 3
    trainer = compose_config("trainer.device=cpu", "trainer.compile=false", "trainer.channels_last=no").trainer
    assert resolve_compute(trainer).compile_mode is None and resolve_compute(trainer).channels_last is False


def test_auto_threads_obey_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what joblib's workers get: CPUs / n_jobs
    assert resolve_threads("auto") == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resolve_threads("auto") >= 1


def test_cuda_sync_warnings_count_but_not_the_debug_modes_own_notice():
    """Both texts as torch 2.11 printed them on an H200: the notice once per process, then each sync."""
    notice = ("Synchronization debug mode is a prototype feature and does not yet detect all synchronizing "
              "operations (Triggered internally at /pytorch/torch/csrc/cuda/Module.cpp:1003.)")
    sync = "called a synchronizing CUDA operation (Triggered internally at c10/cuda/CUDAFunctions.cpp:1.)"
    caught = [warnings.WarningMessage(UserWarning(text), UserWarning, "file.py", 1) for text in (notice, sync)]
    assert cuda_syncs(caught) == [f"cuda: {sync}"]


def test_the_sync_detector_catches_host_reads_and_nothing_else():
    x = torch.randn(8)
    checker = HostSyncs(CPU)
    with checker.step():
        y = (x * 2 + 1).relu().sum()
        torch._foreach_norm([x, y])
    assert checker.found == []
    with checker.step():
        y.item()
    with checker.step():
        bool(y > 0)
    with checker.step():
        x[x > 0]
    with checker.step():
        x[x < 0] = 0
    assert checker.found == ["_local_scalar_dense", "_local_scalar_dense", "index", "index_put_"]


def test_no_training_step_waits_for_the_device(tmp_path):
    """Every probe on, at every step: gradient norms, landscape, augmentation, logging."""
    cfg = compose_config("data=synthetic", "trainer=smoke", "model.depth=8", "trainer.device=cpu",
                         "probes.grad_norms.every=1", "probes.landscape.every=3", "trainer.log_every=2",
                         "data.train_size=256", "data.val_size=64", "data.test_size=64", "probes.shift.images=64",
                         f"paths.runs={tmp_path}")
    setup = build(cfg)
    client, experiment_id = open_experiment(f"sqlite:///{tmp_path}/s.db", "syncs")
    run_id = client.create_run(experiment_id).info.run_id
    checker = HostSyncs(setup.device)
    outcome = train(setup, cfg.trainer, MetricBuffer(client, run_id), step_context=checker.step)
    assert outcome.status == "finished" and outcome.steps == cfg.trainer.steps
    assert checker.found == []
    assert "train/landscape_grad_predictiveness" in outcome.final and "weights/grad_norm/total" in outcome.final


@pytest.mark.skipif(not bf16_supported(CPU), reason="this CPU has no fast bf16")
def test_auto_precision_trains_in_bf16_channels_last_and_says_so(runs_dir):
    result = run_cli(*SYNTHETIC, "trainer=smoke", "model.depth=8", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    _, runs = all_runs(f"sqlite:///{runs_dir}/mlflow.db")
    tags = runs[0].data.tags
    assert (tags["precision"], tags["channels_last"], tags["compile"]) == ("bf16", "true", "off")
    assert int(tags["threads"]) == torch.get_num_threads()
    # bf16 autocast changes the rounding, not the answer: an fp32 recomputation agrees closely
    accuracy, loss = recompute_test_metrics(f"sqlite:///{runs_dir}/mlflow.db", runs[0])
    assert runs[0].data.metrics["test/acc"] == pytest.approx(accuracy, abs=0.01)
    assert runs[0].data.metrics["test/loss"] == pytest.approx(loss, rel=0.01)


@pytest.mark.skipif(not shutil.which(os.environ.get("CXX", "g++")), reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_training_follows_the_eager_trajectory(runs_dir):
    """torch.compile on the CPU (inductor's C++ backend), fp32: the same losses as eager, to rounding."""
    result = run_cli("-m", "trainer.compile=false,true", *SYNTHETIC, "trainer=smoke",
                     "model.depth=8", "trainer.steps=6", "trainer.log_every=1", "trainer.precision=fp32",
                     "probes.shift.images=64", runs_dir=runs_dir, timeout=600)
    assert result.returncode == 0, result.stderr
    client, runs = all_runs(f"sqlite:///{runs_dir}/mlflow.db")
    jobs = {r.data.tags["compile"]: r for r in runs if r.data.tags.get("kind") != "sweep"}
    assert set(jobs) == {"off", "default"} and all(r.info.status == "FINISHED" for r in jobs.values())
    eager, compiled = ([m.value for m in client.get_metric_history(jobs[k].info.run_id, "train/loss")]
                       for k in ("off", "default"))
    assert len(eager) == 6 and compiled == pytest.approx(eager, rel=1e-3)
    assert "weights/grad_norm/total" in jobs["default"].data.metrics


def test_the_device_tag_names_the_cpu_and_its_threads():
    from harness.tracking.store import cpu_model, device_name

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert device_name(torch.device("cpu")) == f"cpu ({cpu_model()}, 1 thread)"
        torch.set_num_threads(2)
        assert device_name(torch.device("cpu")) == f"cpu ({cpu_model()}, 2 threads)"
    finally:
        torch.set_num_threads(before)
