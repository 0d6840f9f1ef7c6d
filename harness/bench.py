"""Training speed: `python -m harness.bench [--depths 8,20,56] [--steps 200] [--compile auto] [--sweep] [--profile]`

1. Throughput, per depth (residual, BatchNorm, batch 128, CIFAR-sized images): training
   images/s of the harness trainer with probes at their defaults, with probes off, and of
   a textbook PyTorch loop written below (map-style Dataset with per-sample crop+flip,
   DataLoader with worker processes, fp32, NCHW, no compile, `loss.item()` every step),
   which is what most users would otherwise run. Each trainer runs two epochs (of --steps
   steps on generated data; a real dataset, --data, has its own epoch); the second is
   timed (the first pays for compiling, cuDNN autotuning and worker start-up). The three
   alternate --repeats times in this one process, in reversed order every other time;
   best times count. All train on one copy of the data, loaded once.
2. With --profile: where a harness step's time goes, under torch.profiler (per step: wall
   time, device-busy time, kernel launches, host time spent launching). With --variants:
   the eager harness in bf16/fp32 x channels_last/NCHW, to check what precision=auto picks.
3. Host syncs: harness steps under harness.training.syncs.HostSyncs (on CUDA also
   torch.cuda.set_sync_debug_mode("warn")); any synchronising op is listed.
4. With --concurrent N: the aggregate training images/s of N ResNet-20 jobs at once against
   one job alone, through the CLI as in 5.
5. With --sweep: a depth 8/20/56 x residual on/off sweep through the real CLI, one job at a
   time (Hydra's basic launcher) and --parallel jobs at once on the one device
   (hydra/launcher=joblib, through an MPS daemon on a GPU: harness.jobs.mps); wall time and jobs
   per hour of each. Each sweep starts with an empty torch.compile cache, as a first sweep does.
`--timings URI` prints, for the sweep in that store, what each job spent before its first
step (start-up metrics) and the sweep's span and aggregate throughput (.ci/gpu's study stage).
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from harness import contract
from harness.app import build
from harness.jobs.job import PROJECT_ROOT
from harness.training.compute import resolve_device, usable_cpus
from harness.config import load_data, make_model
from harness.training.syncs import HostSyncs
from harness.tracking.store import MetricBuffer, device_name, open_experiment
from harness.training.train import train

CIFAR_TRAIN_IMAGES = 50_000  # seconds per epoch are quoted for an epoch of this many images


# ---------------------------------------------------------------- the harness trainer


def data_overrides(args) -> list:
    """--data, with generated data sized to --steps steps an epoch (+1000 held out)."""
    overrides = args.data.split()
    if "data=synthetic" in overrides:
        overrides += [f"data.train_size={args.steps * args.batch_size + 1000}", "data.val_size=1000",
                      "data.test_size=1000"]
    return overrides


def harness_config(args, depth: int, probes: str, runs_dir: str, steps: int | None = None, extra=()):
    overrides = [
        *data_overrides(args), f"model.depth={depth}", f"probes={probes}", f"trainer.device={args.device}",
        f"trainer.batch_size={args.batch_size}", f"trainer.compile={args.compile}",
        f"trainer.precision={args.precision}", "trainer.epochs=2", f"trainer.steps={steps or 'null'}",
        f"paths.runs={runs_dir}", f"tracking.uri=sqlite:///{runs_dir}/bench.db",
        # shift scores run at evaluations only, outside the timed epoch: not worth their minutes here
        "probes.shift.images=0", "probes.shift.val_images=0", *extra,
    ]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def train_once(cfg, splits, setup=None, step_context=nullcontext):
    """One harness training run logged to the bench store, as a job would log it."""
    setup = setup or build(cfg, splits)
    client, experiment_id = open_experiment(cfg.tracking.uri, "bench")
    run_id = client.create_run(experiment_id).info.run_id
    outcome = train(setup, cfg.trainer, MetricBuffer(client, run_id), step_context, label=None)  # timed: no display
    client.set_terminated(run_id)
    return outcome


def time_harness(cfg, splits) -> float:
    """Images/s of the second (warm) training epoch, as the trainer itself logs it."""
    return train_once(cfg, splits).final[contract.IMAGES_PER_SEC]


def check_host_syncs(args, depth: int, splits, runs_dir: str) -> tuple:
    """(synchronising ops in the training steps of a short harness run at this depth with probes
    at their defaults, or None where they cannot be checked; how many first steps were not checked)."""
    steps_per_epoch = len(splits.train_y) // args.batch_size
    cfg = harness_config(args, depth, "default", runs_dir, steps=steps_per_epoch + 30)  # into the second epoch
    setup = build(cfg, splits)
    compiled = setup.forward is not setup.model
    if compiled and setup.device.type != "cuda":
        return None, 0  # a compiled model hides its ops from the dispatch-mode detector, the CPU's only one
    warmup = 3 if compiled else 0  # compiling, then recording the CUDA graphs, synchronise by design
    checker = HostSyncs(setup.device, eager=not compiled, warmup=warmup)
    train_once(cfg, splits, setup, checker.step)
    return checker.found, warmup


def measure_variants(args, depth: int, splits, runs_dir: str) -> list:
    """[(precision and layout, images/s)] of the eager harness trainer with probes off."""
    rows = []
    for precision in ("bf16", "fp32"):
        for channels_last in (True, False):
            cfg = harness_config(args, depth, "off", runs_dir, extra=[
                f"trainer.precision={precision}", f"trainer.channels_last={str(channels_last).lower()}",
                "trainer.compile=false"])
            rows.append((f"{precision} {'channels_last' if channels_last else 'NCHW'}", time_harness(cfg, splits)))
    return rows


# ---------------------------------------------------------------- where a step's time goes


def profile_steps(args, depth: int, splits, runs_dir: str, warmup: int = 30, active: int = 20) -> str:
    """torch.profiler over `active` steady-state steps of the harness trainer (probes at defaults)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    cfg = harness_config(args, depth, "default", runs_dir, steps=warmup + active + 1)
    setup = build(cfg, splits)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    window = {}  # host clock at the start and the end of the profiled steps, the device caught up at both
    sync = torch.cuda.synchronize if setup.device.type == "cuda" else (lambda: None)

    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1)) as prof:
        @contextlib.contextmanager
        def profiled_step():
            if prof.step_num == warmup:
                sync()
                window["start"] = time.perf_counter()
            yield
            if prof.step_num == warmup + active - 1:
                sync()
                window["end"] = time.perf_counter()
            prof.step()

        train_once(cfg, splits, setup, profiled_step)
    return summarise_profile(prof.key_averages(), (window["end"] - window["start"]) / active, active, depth,
                             args.batch_size)


def summarise_profile(events, step_seconds: float, steps: int, depth: int, batch_size: int) -> str:
    """Per step: wall time, time the device was busy with kernels, launches and launch calls."""
    wall_us = 1e6 * step_seconds
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(getattr(e, "self_device_time_total", 0) for e in kernels) / steps
    launches = sum(e.count for e in kernels) / steps
    launch_calls = [e for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                   "cudaGraphLaunch", "cuLaunchKernelEx")]
    launch_us = sum(e.self_cpu_time_total for e in launch_calls) / steps
    top = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    lines = [f"ResNet-{depth}: {wall_us:,.0f} us a step ({batch_size * 1e6 / wall_us:,.0f} img/s while profiled)"]
    if kernels:
        lines.append(f"  device busy {busy_us:,.0f} us a step ({100 * busy_us / wall_us:.0f}% of the step: "
                     f"{'host-bound' if busy_us < 0.8 * wall_us else 'device-bound'}); "
                     f"{launches:,.0f} kernels a step; host time in launch calls {launch_us:,.0f} us "
                     f"({100 * launch_us / wall_us:.0f}%)")
    lines.append("  most host time: " + ", ".join(f"{e.key} {e.self_cpu_time_total / steps:,.0f} us" for e in top))
    return "\n".join(lines)


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


def time_textbook(args, cfg, splits) -> float:
    """Images/s in the second epoch of a plain DataLoader training loop, same data and model as cfg."""
    device = resolve_device(args.device)
    dataset = TextbookCifar(splits.train_x.permute(0, 2, 3, 1).numpy(), splits.train_y.numpy(), splits.mean, splits.std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    model = make_model(cfg.model, splits.num_classes).to(device)
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
    return len(loader) * args.batch_size / seconds


# ---------------------------------------------------------------- the sweep and jobs at once


def run_sweep(args, runs_dir: str, overrides: list, parallel: int) -> tuple:
    """(wall seconds, store URI) of a sweep through the CLI: one job at a time (Hydra's basic
    launcher), or `parallel` at once (hydra/launcher=joblib, sharing the device through MPS
    as trainer.mps says). Each starts with an empty torch.compile cache, as a first sweep does."""
    folder = tempfile.mkdtemp(dir=runs_dir, prefix="sweep-")
    uri = f"sqlite:///{folder}/sweep.db"
    command = [sys.executable, "-m", "harness", "-m", *overrides, *data_overrides(args), f"trainer.device={args.device}",
               f"trainer.batch_size={args.batch_size}", f"trainer.compile={args.compile}", f"paths.runs={folder}",
               f"tracking.uri={uri}"]
    if parallel > 1:
        command += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={parallel}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{folder}/compile-cache"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return seconds, uri


def time_sweep(args, runs_dir: str, parallel: int) -> float:
    """Wall seconds of the 6-job depth x residual sweep through the CLI."""
    return run_sweep(args, runs_dir, ["model.depth=8,20,56", "model.residual=true,false", *args.sweep_args.split()],
                     parallel)[0]


def job_epochs(uri: str) -> list:
    """Per job of the store's sweeps: (run, [(epoch end in s since the epoch, seconds, images/s)] by epoch)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    jobs = [r for r in client.search_runs(experiments, max_results=10000) if r.data.tags.get(contract.KIND) != "sweep"]
    result = []
    for run in jobs:
        times = client.get_metric_history(run.info.run_id, contract.EPOCH_TIME)
        rates = {m.step: m.value for m in client.get_metric_history(run.info.run_id, contract.IMAGES_PER_SEC)}
        result.append((run, [(m.timestamp / 1000, m.value, rates[m.step]) for m in sorted(times, key=lambda m: m.step)]))
    return result


def steady_rate(epochs: list) -> float:
    """A job's median images/s over its epochs after the first (which compiles and records graphs)."""
    later = [rate for _, _, rate in epochs[1:]] or [rate for _, _, rate in epochs]
    return sorted(later)[len(later) // 2]


def concurrent_rates(args, runs_dir: str, parallel: int) -> dict:
    """{jobs at once: aggregate training images/s} of identical ResNet-20 jobs (seeds 0..N-1):
    the sum of each job's steady rate. The jobs start together and train the same epochs, so
    their steady epochs overlap."""
    rates = {}
    for jobs in (1, parallel):
        seeds = ",".join(str(seed) for seed in range(jobs))
        _, uri = run_sweep(args, runs_dir, ["model.depth=20", f"trainer.seed={seeds}",
                                            f"trainer.epochs={args.concurrent_epochs}"], jobs)
        rates[jobs] = sum(steady_rate(epochs) for _, epochs in job_epochs(uri))
    return rates


def study_timings(uri: str, report_end: float | None) -> str:
    """What a sweep's jobs cost before their first step and how long it took, from its store."""
    jobs = job_epochs(uri)
    if not jobs:
        return f"no jobs in {uri}"
    first_start = min(run.info.start_time for run, _ in jobs) / 1000
    last_end = max(run.info.end_time or 0 for run, _ in jobs) / 1000
    images = sum(seconds * rate for _, epochs in jobs for _, seconds, rate in epochs)
    training = [(end - seconds, end) for _, epochs in jobs for end, seconds, _ in epochs]
    lines = [f"{len(jobs)} jobs: first job start to last job end {last_end - first_start:.1f} s"
             + (f", to the report's end {report_end - first_start:.1f} s" if report_end else ""),
             f"aggregate training throughput {images / (max(e for _, e in training) - min(s for s, _ in training)):,.0f}"
             " img/s (every epoch's images over the span from the first epoch's start to the last one's end)",
             "", f"{'job':28s} {'mps':>6s} {'process':>8s} {'cuda':>6s} {'data':>6s} {'build':>6s} {'epoch 1':>8s} "
             f"{'later':>7s} {'img/s':>8s} {'test acc':>8s}"]
    for run, epochs in sorted(jobs, key=lambda job: job[0].info.start_time):
        m = run.data.metrics
        later = sorted(seconds for _, seconds, _ in epochs[1:]) or [float("nan")]
        cells = [f"{m.get(contract.STARTUP + phase, float('nan')):6.1f}" for phase in ("cuda_init_s", "data_s", "build_s")]
        lines.append(f"{run.info.run_name[:28]:28s} {'on' if run.data.tags.get('mps', 'off') != 'off' else 'off':>6s} "
                     f"{m.get(contract.STARTUP + 'process_s', float('nan')):8.1f} {' '.join(cells)} "
                     f"{epochs[0][1] if epochs else float('nan'):8.1f} {later[len(later) // 2]:7.1f} "
                     f"{steady_rate(epochs) if epochs else float('nan'):8,.0f} {m.get(contract.TEST_ACC, float('nan')):8.4f}")
    lines.append("(seconds: process = Python, imports and worker start before a process's first job; cuda = driver "
                 "and context; data = loading the dataset; build = all of setup; epoch 1 - later = compiling and "
                 "CUDA-graph capture; later = median of the other epochs)")
    return "\n".join(lines)


# ---------------------------------------------------------------- report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="8,20,56")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed epoch of generated data")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", default="auto", help="trainer.compile for the harness: auto, false, true or a mode")
    parser.add_argument("--workers", type=int, default=min(8, usable_cpus()), help="DataLoader workers of the reference")
    parser.add_argument("--repeats", type=int, default=2, help="0: no throughput table (with --sweep: the sweep only)")
    parser.add_argument("--data", default="data=synthetic",
                        help="data overrides for every trainer and sweep job, e.g. 'data=imagefolder data.root=DIR'")
    parser.add_argument("--profile", action="store_true", help="also profile the harness's steps at each depth")
    parser.add_argument("--variants", action="store_true",
                        help="also time the eager harness in fp32/bf16 x channels_last/NCHW at the first depth")
    parser.add_argument("--sweep", action="store_true", help="also time the 6-job sweep, sequential vs parallel")
    parser.add_argument("--parallel", type=int, default=3, help="jobs at once in the parallel sweep")
    parser.add_argument("--sweep-args", default="trainer.epochs=2",
                        help="more overrides for every sweep job, e.g. 'recipe=fast'")
    parser.add_argument("--concurrent", type=int, default=0,
                        help="also the aggregate images/s of this many ResNet-20 jobs at once against one job")
    parser.add_argument("--concurrent-epochs", type=int, default=3, help="epochs of each of those jobs")
    parser.add_argument("--timings", metavar="URI", help="only print the timings of the sweep in this store")
    parser.add_argument("--report-end", type=float, help="with --timings: when its report was written (epoch s)")
    args = parser.parse_args(argv)
    if args.timings:
        print(study_timings(args.timings, args.report_end))
        return
    depths = [int(d) for d in args.depths.split(",")]

    with tempfile.TemporaryDirectory() as runs_dir:
        splits = load_data(harness_config(args, depths[0], "off", runs_dir).data)
        steps = len(splits.train_y) // args.batch_size
        print(f"{device_name(resolve_device(args.device))}, torch {torch.__version__}, {args.data}, batch "
              f"{args.batch_size}, {steps} steps per timed epoch, best of {args.repeats}; harness: "
              f"precision={args.precision} compile={args.compile}; reference: fp32, {args.workers} DataLoader workers",
              flush=True)
        if args.repeats:
            print_table([measure_depth(args, depth, splits, runs_dir) for depth in depths])
        if args.profile:
            print("\nwhere a harness step's time goes (probes at their defaults; torch.profiler):")
            for depth in depths:
                print(profile_steps(args, depth, splits, runs_dir), flush=True)
        if args.variants:
            print(f"\nResNet-{depths[0]}, eager, probes off, one trial each:")
            for name, rate in measure_variants(args, depths[0], splits, runs_dir):
                print(f"  {name:20s} {rate:10,.0f} img/s", flush=True)
        if args.repeats:
            found, warmup = check_host_syncs(args, depths[0], splits, runs_dir)  # the loop is the same at any depth
            summary = ("not checked (compiled on a CPU)" if found is None else
                       "none" if not found else f"{len(found)}: {', '.join(sorted(set(found)))}")
            print(f"\nhost-device syncs inside {steps + 30 - warmup} ResNet-{depths[0]} training steps"
                  f"{f' (after {warmup} warm-up steps)' if warmup else ''}: {summary}", flush=True)
        if args.concurrent:
            rates = concurrent_rates(args, runs_dir, args.concurrent)
            print(f"\nResNet-20 jobs at once ({args.data} trainer.epochs={args.concurrent_epochs}; the median "
                  "images/s of each job's epochs after its first, summed):")
            print(f"  one job         {rates[1]:10,.0f} img/s")
            print(f"  {args.concurrent} at once  {rates[args.concurrent]:10,.0f} img/s in all: "
                  f"{rates[args.concurrent] / rates[1]:.2f}x one job")
        if args.sweep:
            print(f"\nsweep model.depth=8,20,56 model.residual=true,false {args.data} {args.sweep_args} (6 jobs):")
            seconds = {}
            for parallel in (1, args.parallel):
                seconds[parallel] = time_sweep(args, runs_dir, parallel)
                label = "one at a time" if parallel == 1 else f"{parallel} at once"
                print(f"  {label:17s} {seconds[parallel]:8.1f} s  {6 * 3600 / seconds[parallel]:8.1f} jobs/hour", flush=True)
            print(f"  parallel speed-up {seconds[1] / seconds[args.parallel]:.2f}x", flush=True)


def measure_depth(args, depth: int, splits, runs_dir: str) -> dict:
    """Best images/s of each trainer at one depth."""
    configs = {name: harness_config(args, depth, name, runs_dir) for name in ("default", "off")}
    rates = {"default": [], "off": [], "reference": []}
    for repeat in range(args.repeats):
        for name in list(rates) if repeat % 2 == 0 else reversed(rates):  # no trainer always goes first
            rate = (time_textbook(args, configs["off"], splits) if name == "reference"
                    else time_harness(configs[name], splits))
            rates[name].append(rate)
            print(f"  ResNet-{depth} trial {repeat + 1} {name:9s} {rate:10,.0f} img/s", flush=True)
    return {"depth": depth, **{name: max(r) for name, r in rates.items()}}


def print_table(rows) -> None:
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
