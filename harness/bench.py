"""What the probes cost: `python -m harness.bench [--steps 351] [--depth 20] [--device auto]`

Runs the same ResNet job, `--steps` training steps as one epoch (351 = one CIFAR-10 epoch
at batch 128), one validation pass over 5,000 images and the final test evaluation over
10,000, once with `probes=default` and once with `probes=off`, alternating the two
`--repeats` times in this one process and logging to a temporary SQLite MLflow store as a
job does. Prints the ratio of the best times for the training steps alone (per-step probes:
gradient norms) and for the whole job (adding the shift-invariance scores at evaluation).
"""

import argparse
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from harness.app import PROJECT_ROOT, build
from harness.tracking import MetricBuffer, open_experiment
from harness.train import train


def make_config(probes: str, args, runs_dir: str):
    overrides = [
        f"probes={probes}", "data=synthetic", f"model.depth={args.depth}", f"trainer.device={args.device}",
        f"trainer.steps={args.steps}", f"trainer.batch_size={args.batch_size}", "trainer.log_every=50",
        f"data.train_size={args.steps * args.batch_size + 5000}", "data.val_size=5000", "data.test_size=10000",
        f"paths.runs={runs_dir}", f"tracking.uri=sqlite:///{runs_dir}/bench.db",
    ]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def timed_trial(cfg) -> tuple:
    """(seconds of the training steps, seconds of the whole job)."""
    setup = build(cfg)
    client, experiment_id = open_experiment(cfg.tracking.uri, "bench")
    run_id = client.create_run(experiment_id).info.run_id
    start = time.perf_counter()
    outcome = train(setup, cfg.trainer, MetricBuffer(client, run_id))
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    client.set_terminated(run_id)
    return outcome.final["perf/epoch_time_s"], seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=351)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    times = {"off": [], "default": []}
    with tempfile.TemporaryDirectory() as runs_dir:
        configs = {name: make_config(name, args, runs_dir) for name in times}
        for repeat in range(args.repeats):
            for name in times:
                steps_s, job_s = timed_trial(configs[name])
                times[name].append((steps_s, job_s))
                print(f"trial {repeat + 1}: probes={name:8s} training steps {steps_s:7.2f} s "
                      f"({args.steps * args.batch_size / steps_s:,.0f} img/s), whole job {job_s:7.2f} s", flush=True)
    best = {name: (min(t[0] for t in runs), min(t[1] for t in runs)) for name, runs in times.items()}
    steps_ratio, job_ratio = (best["default"][i] / best["off"][i] for i in range(2))
    print(f"\nResNet-{args.depth}, {args.steps} steps of batch {args.batch_size}, "
          f"{build_device_name(args.device)}, torch {torch.__version__}, best of {args.repeats}")
    print(f"training steps: probes off {best['off'][0]:.2f} s, defaults {best['default'][0]:.2f} s: "
          f"overhead {steps_ratio:.3f}x ({100 * (steps_ratio - 1):+.1f}%)")
    print(f"whole job (+ validation and test with shift scores): probes off {best['off'][1]:.2f} s, "
          f"defaults {best['default'][1]:.2f} s: overhead {job_ratio:.3f}x ({100 * (job_ratio - 1):+.1f}%)")


def build_device_name(name: str) -> str:
    from harness.app import resolve_device
    from harness.tracking import device_name

    return device_name(resolve_device(name))


if __name__ == "__main__":
    main()
