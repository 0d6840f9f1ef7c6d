"""Training speed: `python -m harness.bench [--depths 8,20,56] [--steps 200] [--compile true] [--sweep]`

1. Throughput, per depth (residual, BatchNorm, batch 128, CIFAR-sized images): training
   images/s of the harness trainer with probes at their defaults, with probes off, and of
   a textbook PyTorch loop written below (map-style Dataset with per-sample crop+flip,
   DataLoader with worker processes, fp32, NCHW, no compile, `loss.item()` every step),
   which is what most users would otherwise run. Each trainer runs two epochs of --steps
   steps; the second is timed (the first pays for compiling, cuDNN autotuning and worker
   start-up). The three alternate --repeats times in this one process, in reversed order
   every other time; best times count.
2. Host syncs: a few harness steps under harness.syncs.HostSyncs (on CUDA also
   torch.cuda.set_sync_debug_mode("warn")); any synchronising op is listed.
3. With --sweep: a depth 8/20/56 x residual on/off sweep through the real CLI, one job at a
   time (Hydra's basic launcher) and --parallel jobs at once on the one device
   (hydra/launcher=joblib); wall time and jobs per hour of each.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from harness.app import PROJECT_ROOT, build
from harness.compute import resolve_device, usable_cpus
from harness.data import load_dataset
from harness.models import build_model
from harness.syncs import HostSyncs
from harness.tracking import MetricBuffer, device_name, open_experiment
from harness.train import train

CIFAR_TRAIN_IMAGES = 50_000  # seconds per epoch are quoted for an epoch of this many images


# ---------------------------------------------------------------- the harness trainer


def harness_config(args, depth: int, probes: str, runs_dir: str, steps: int | None = None):
    overrides = [
        "data=synthetic", f"data.train_size={args.steps * args.batch_size + 1000}", "data.val_size=1000",
        "data.test_size=1000", f"model.depth={depth}", f"probes={probes}", f"trainer.device={args.device}",
        f"trainer.batch_size={args.batch_size}", f"trainer.compile={args.compile}",
        f"trainer.precision={args.precision}", "trainer.epochs=2", f"trainer.steps={steps or 'null'}",
        f"paths.runs={runs_dir}", f"tracking.uri=sqlite:///{runs_dir}/bench.db",
    ]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def train_once(cfg, setup=None, step_context=nullcontext):
    """One harness training run logged to the bench store, as a job would log it."""
    setup = setup or build(cfg)
    client, experiment_id = open_experiment(cfg.tracking.uri, "bench")
    run_id = client.create_run(experiment_id).info.run_id
    outcome = train(setup, cfg.trainer, MetricBuffer(client, run_id), step_context)
    client.set_terminated(run_id)
    return outcome


def time_harness(cfg) -> float:
    """Seconds of the second (warm) training epoch, as the trainer itself logs it."""
    return train_once(cfg).final["perf/epoch_time_s"]


def check_host_syncs(args, runs_dir: str) -> list | None:
    """Synchronising ops in the training steps of a short harness run (probes at defaults);
    None where they cannot be checked."""
    cfg = harness_config(args, 20, "default", runs_dir, steps=args.steps + 30)  # into the second epoch
    setup = build(cfg)
    compiled = setup.forward is not setup.model
    if compiled and setup.device.type != "cuda":
        return None  # a compiled model hides its ops from the dispatch-mode detector, the CPU's only one
    checker = HostSyncs(setup.device, eager=not compiled)
    train_once(cfg, setup, checker.step)
    return checker.found


# ---------------------------------------------------------------- the textbook reference


class TextbookCifar(torch.utils.data.Dataset):
    """Per-sample augmentation in worker processes, as in most tutorials."""

    def __init__(self, images_hwc, labels, mean, std):
        self.images, self.labels = images_hwc, labels  # uint8 (N, H, W, C) numpy, int64 numpy
        self.mean, self.std = mean.view(3, 1, 1), std.view(3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        padded = torch.nn.functional.pad(torch.from_numpy(self.images[i]).permute(2, 0, 1), (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        image = padded[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return (image.float() / 255 - self.mean) / self.std, int(self.labels[i])


def time_textbook(args, cfg) -> float:
    """Seconds of the second epoch of a plain DataLoader training loop, same data and model as cfg."""
    device = resolve_device(args.device)
    splits = load_dataset(cfg.data)
    dataset = TextbookCifar(splits.train_x.permute(0, 2, 3, 1).numpy(), splits.train_y.numpy(), splits.mean, splits.std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    model = build_model(cfg.model, splits.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    seconds = 0.0
    for _ in range(2):
        start, running_loss = time.perf_counter(), 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        seconds = time.perf_counter() - start
    return seconds


# ---------------------------------------------------------------- the sweep


def time_sweep(args, runs_dir: str, parallel: int) -> float:
    """Wall seconds of the 6-job depth x residual sweep through the CLI."""
    command = [sys.executable, "-m", "harness", "-m", "model.depth=8,20,56", "model.residual=true,false",
               f"trainer.device={args.device}", f"trainer.compile={args.compile}", *args.sweep_args.split(),
               f"paths.runs={runs_dir}", f"tracking.uri=sqlite:///{runs_dir}/sweep.db"]
    if parallel > 1:
        command += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={parallel}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return seconds


# ---------------------------------------------------------------- report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="8,20,56")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", default="false", help="trainer.compile for the harness: false, true or a mode")
    parser.add_argument("--workers", type=int, default=min(8, usable_cpus()), help="DataLoader workers of the reference")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="also time the 6-job sweep, sequential vs parallel")
    parser.add_argument("--parallel", type=int, default=3, help="jobs at once in the parallel sweep")
    parser.add_argument("--sweep-args", default="data=synthetic trainer.epochs=2",
                        help="overrides for every sweep job, e.g. 'data=imagefolder data.root=DIR trainer=fast'")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    print(f"{device_name(resolve_device(args.device))}, torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.steps} steps per timed epoch, best of {args.repeats}; harness: precision={args.precision} "
          f"compile={args.compile}; reference: fp32, {args.workers} DataLoader workers", flush=True)

    with tempfile.TemporaryDirectory() as runs_dir:
        rows = [measure_depth(args, depth, runs_dir) for depth in depths]
        print_table(rows, args)
        found = check_host_syncs(args, runs_dir)
        summary = ("not checked (compiled on a CPU)" if found is None else
                   "none" if not found else f"{len(found)}: {', '.join(sorted(set(found)))}")
        print(f"\nhost-device syncs inside {args.steps + 30} harness training steps: {summary}")
        if args.sweep:
            sequential = time_sweep(args, runs_dir, 1)
            parallel = time_sweep(args, runs_dir, args.parallel)
            print(f"\nsweep model.depth=8,20,56 model.residual=true,false {args.sweep_args} (6 jobs):")
            print(f"  one at a time     {sequential:8.1f} s  {6 * 3600 / sequential:8.1f} jobs/hour")
            print(f"  {args.parallel} at once         {parallel:8.1f} s  {6 * 3600 / parallel:8.1f} jobs/hour")
            print(f"  parallel speed-up {sequential / parallel:.2f}x")


def measure_depth(args, depth: int, runs_dir: str) -> dict:
    configs = {name: harness_config(args, depth, name, runs_dir) for name in ("default", "off")}
    times = {"default": [], "off": [], "reference": []}
    for repeat in range(args.repeats):
        for name in list(times) if repeat % 2 == 0 else reversed(times):  # no trainer always goes first
            seconds = (time_textbook(args, configs["off"]) if name == "reference"
                       else time_harness(configs[name]))
            times[name].append(seconds)
            print(f"  ResNet-{depth} trial {repeat + 1} {name:9s} {args.steps * args.batch_size / seconds:10,.0f} img/s",
                  flush=True)
    return {"depth": depth, **{name: args.steps * args.batch_size / min(t) for name, t in times.items()}}


def print_table(rows, args) -> None:
    print(f"\ntraining images/s (seconds per {CIFAR_TRAIN_IMAGES:,}-image epoch)")
    print(f"{'model':10s} {'probes default':>20s} {'probes off':>20s} {'textbook reference':>20s}"
          f" {'harness/reference':>18s} {'probe overhead':>15s}")
    for row in rows:
        cells = [f"{row[k]:9,.0f} ({CIFAR_TRAIN_IMAGES / row[k]:6.1f} s)" for k in ("default", "off", "reference")]
        overhead = row["off"] / row["default"] - 1
        print(f"ResNet-{row['depth']:<3d} {cells[0]:>20s} {cells[1]:>20s} {cells[2]:>20s}"
              f" {row['default'] / row['reference']:17.2f}x {100 * overhead:+14.1f}%")


if __name__ == "__main__":
    main()
