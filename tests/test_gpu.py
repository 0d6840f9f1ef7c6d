"""The CUDA path, on a real GPU: the CLI eager and compiled, no step that synchronises, the
landscape probe's trajectory claim, two jobs sharing one GPU, bf16 picked by precision=auto.

Skipped where CUDA is not available (CI has no GPU); `.ci/gpu` runs them on the GPU machine.
"""

import pytest
import torch

from harness.app import build
from harness.training.compute import resolve_precision
from harness.training.syncs import HostSyncs
from harness.tracking.store import MetricBuffer, open_experiment
from harness.training.train import train

from conftest import all_runs, compose_config, recompute_test_metrics, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by .ci/gpu)")

SMOKE = ["data=synthetic", "trainer=smoke", "model.depth=8", "trainer.device=cuda"]


def jobs_by(runs, tag):
    return {r.data.tags[tag]: r for r in runs if r.data.tags.get("kind") != "sweep"}


def test_auto_precision_is_bf16_on_a_gpu_that_has_it():
    # bf16 tensor cores came with compute capability 8.0 (Ampere); read apart from torch's own check
    has_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if has_bf16 else "fp32")


def test_cli_trains_on_the_gpu_eager_then_compiled_along_one_trajectory(runs_dir):
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    result = run_cli("-m", "trainer.compile=false,true", *SMOKE, "trainer.steps=8", "trainer.log_every=1",
                     "probes.shift.images=64", runs_dir=runs_dir, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping cudagraphs" not in result.stderr  # reduce-overhead that silently runs without graphs
    client, runs = all_runs(uri)
    jobs = jobs_by(runs, "compile")
    assert set(jobs) == {"off", "reduce-overhead"}
    for run in jobs.values():
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["device"] == torch.cuda.get_device_name()
        assert (tags["precision"], tags["channels_last"]) == ("bf16", "true")
        # the logged weights, evaluated by a plain fp32 loop on the CPU, give the logged test accuracy
        accuracy, loss = recompute_test_metrics(uri, run)
        assert run.data.metrics["test/acc"] == pytest.approx(accuracy, abs=0.02)
        assert run.data.metrics["test/loss"] == pytest.approx(loss, rel=0.02)
    eager, compiled = ([m.value for m in client.get_metric_history(jobs[k].info.run_id, "train/loss")]
                       for k in ("off", "reduce-overhead"))
    assert len(eager) == len(compiled) == 8
    # bf16 rounds differently when kernels are fused: the first steps agree to bf16 precision
    assert compiled[0] == pytest.approx(eager[0], rel=1e-2)
    assert compiled == pytest.approx(eager, rel=3e-2)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_no_training_step_synchronises_under_cuda_sync_debug_mode_error(tmp_path, compiled):
    """Every probe at every step; a synchronising CUDA call inside a step raises and fails the run.
    A compiled model's first steps compile and record its CUDA graphs, and are not checked."""
    cfg = compose_config(*SMOKE, "data.train_size=1024", "data.val_size=128", "data.test_size=128",
                         "probes.shift.images=128", f"trainer.compile={str(compiled).lower()}", "trainer.steps=24",
                         "probes.grad_norms.every=1", "probes.landscape.every=3", "trainer.log_every=2",
                         f"paths.runs={tmp_path}")
    setup = build(cfg)
    client, experiment_id = open_experiment(f"sqlite:///{tmp_path}/gpu.db", "gpu")
    checker = HostSyncs("cuda", eager=not compiled, warmup=3 if compiled else 0, cuda_mode="error")
    outcome = train(setup, cfg.trainer, MetricBuffer(client, client.create_run(experiment_id).info.run_id),
                    checker.step)
    assert outcome.status == "finished" and outcome.steps == 24
    assert checker.found == []
    assert "train/landscape_grad_predictiveness" in outcome.final and "weights/grad_norm/total" in outcome.final


def final_weights(tmp_path, landscape_every: int, deterministic: bool) -> dict:
    previous = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        cfg = compose_config(*SMOKE, "data.train_size=512", "data.val_size=64", "data.test_size=64",
                             "probes.shift.images=0", "trainer.steps=6", f"probes.landscape.every={landscape_every}",
                             f"paths.runs={tmp_path}")
        setup = build(cfg)  # sets cuDNN's benchmark mode: what a job runs with
        if deterministic:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        client, experiment_id = open_experiment(f"sqlite:///{tmp_path}/l.db", "landscape")
        train(setup, cfg.trainer, MetricBuffer(client, client.create_run(experiment_id).info.run_id))
        return {k: v.detach().cpu().clone() for k, v in setup.model.state_dict().items()}
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_landscape_probe_leaves_the_cuda_trajectory_as_it_was(tmp_path):
    """With deterministic cuDNN the probe leaves training bit-identical. In the default
    (benchmark) mode a run may differ from its own rerun; the probe must not add to that."""
    without = final_weights(tmp_path, 0, deterministic=True)
    with_probe = final_weights(tmp_path, 2, deterministic=True)
    for key in without:
        assert torch.equal(without[key], with_probe[key]), key

    first, second = final_weights(tmp_path, 0, False), final_weights(tmp_path, 0, False)
    probed = final_weights(tmp_path, 2, False)
    rerun_noise, probe_effect = largest_difference(first, second), largest_difference(first, probed)
    print(f"cuDNN benchmark mode: rerun differs by {rerun_noise:.3g}, the probed run by {probe_effect:.3g}")
    if rerun_noise == 0:
        assert probe_effect == 0
    else:
        assert probe_effect <= 10 * rerun_noise


def test_two_joblib_workers_train_on_one_gpu_at_once(runs_dir):
    result = run_cli("-m", "model.depth=8,14", *SMOKE[:2], "trainer.device=cuda", "trainer.steps=400",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", runs_dir=runs_dir, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = all_runs(f"sqlite:///{runs_dir}/mlflow.db")
    jobs = jobs_by(runs, "job_num")
    assert sorted(jobs) == ["0", "1"]
    for run in jobs.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["device"] == torch.cuda.get_device_name(0)
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 400 // 4  # log_every 4
    # at once: each job's run began before the other's ended
    a, b = jobs.values()
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
