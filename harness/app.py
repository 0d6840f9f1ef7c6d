"""The Hydra app: `python -m harness [overrides]`, `python -m harness -m <sweep>`.

One job = build (data, model, optimiser; every bad value is caught here, before anything
is written), open an MLflow run, train, record the outcome. A failed or diverged job is
recorded and the sweep goes on; the process's exit status still reports failures.
"""

import logging
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from harness.augment import Augment
from harness.batches import Normalise, TrainBatches
from harness.compute import apply as apply_compute
from harness.compute import compile_model, resolve_compute
from harness.data import Splits, load_dataset
from harness.errors import ConfigError, HarnessError
from harness.models import build_model, count_parameters
from harness.optim import build_optimizer, build_scheduler
from harness.probes import Probes
from harness.probes import check_config as check_probes
from harness.tracking import JobRun, device_name, open_experiment, write_outcome
from harness.train import Setup, train

log = logging.getLogger("harness")

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# cached resolvers are evaluated once per config, and Hydra copies the cache into every job
OmegaConf.register_new_resolver("harness.root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver(
    "harness.stamp", lambda: time.strftime("%Y-%m-%d/%H-%M-%S-") + secrets.token_hex(3), use_cache=True, replace=True)


@dataclass
class JobInfo:
    """Where Hydra put this job: output folder, sweep folder (None for a single run), overrides."""

    output_dir: Path
    log_file: Path
    sweep_dir: Path | None
    num: int
    overrides: list

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        hc = HydraConfig.get()
        output_dir = Path(hc.runtime.output_dir)
        in_sweep = hc.mode == RunMode.MULTIRUN
        return cls(output_dir, output_dir / f"{hc.job.name}.log", Path(hc.sweep.dir) if in_sweep else None,
                   hc.job.num if in_sweep else 0, list(hc.overrides.task))


def main() -> None:
    """Entry point: reject unknown config-group choices in one line, then hand over to Hydra."""
    try:
        check_group_choices(sys.argv[1:], PROJECT_ROOT / "conf")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def hydra_main(cfg) -> str:
    return run_job(cfg, JobInfo.from_hydra())


def check_group_choices(args: list, conf_dir: Path) -> None:
    """`optim=foo` names a config file that does not exist: say so, with the choices.

    Hydra would say it too, over a dozen lines; sweep lists (`optim=sgd,foo`) are checked
    value by value. Sweep functions such as choice(...) are left to Hydra.
    """
    for arg in args:
        match = re.fullmatch(r"\+?([A-Za-z_]\w*)=([\w,.-]+)", arg)
        if not match or not (conf_dir / match[1]).is_dir():
            continue
        group, values = match[1], match[2].split(",")
        choices = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        for value in values:
            if value not in choices:
                raise ConfigError(f"{group}={value} is not a config choice: use one of {', '.join(choices)}")


def run_job(cfg, job: JobInfo) -> str:
    """Run one job; return its outcome ("finished", "diverged", "failed"), also written to its folder."""
    outcome = "failed"
    try:
        outcome = _run_job(cfg, job)
        return outcome
    finally:
        write_outcome(job.output_dir, outcome)


def _run_job(cfg, job: JobInfo) -> str:
    run = None
    try:
        client, experiment_id = open_experiment(cfg.tracking.uri, cfg.tracking.experiment)
        try:
            setup = build(cfg)
        except HarnessError:
            if job.sweep_dir is not None:  # the sweep records every job, the invalid ones too
                run = JobRun.create(client, experiment_id, cfg, job, {})
            raise
        run = JobRun.create(client, experiment_id, cfg, job, {
            "device": device_name(setup.device), **setup.compute.describe(),
            "num_parameters": count_parameters(setup.model)})
        run.log_text(setup.probes.layer_table(), "layers.csv")
        outcome = train(setup, cfg.trainer, run.metrics)
        if shift_table := setup.probes.shift_table():
            run.log_text(shift_table, "shift_accuracy.csv")
        run.log_artifacts(job, cfg, setup.model)
        run.finish(outcome.status)
        return outcome.status
    except BaseException as e:
        if isinstance(e, HarnessError):
            log.error("error: %s", e)  # the user's to fix: one line, no traceback
        elif isinstance(e, Exception):
            log.exception("job failed: %s", e)
        if run is not None:
            run.fail(e, job)
        if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: the run is ended, let it through
            raise
        if job.sweep_dir is None:
            raise SystemExit(2 if isinstance(e, HarnessError) else 1)
        return "failed"


def build(cfg, splits: Splits | None = None) -> Setup:
    """Everything a job trains with; raises HarnessError naming any bad value.

    `splits`: the dataset, already loaded (the benchmark trains several setups on one)."""
    compute = resolve_compute(cfg.trainer)
    for key in ("batch_size", "log_every", "eval_every", "eval_batch_size"):
        _require_positive_int(cfg.trainer, key)
    if cfg.trainer.steps is not None:
        _require_positive_int(cfg.trainer, "steps")
    else:
        _require_positive_int(cfg.trainer, "epochs")
    # check the cheap parts on a throwaway model before any download or decoding
    build_scheduler(build_optimizer(build_model(cfg.model, num_classes=2), cfg.optim), 1, cfg.schedule)
    augment = Augment(cfg.augment)
    check_probes(cfg.probes)

    apply_compute(compute)
    torch.manual_seed(cfg.trainer.seed)
    splits = splits or load_dataset(cfg.data)
    device = compute.device
    model = build_model(cfg.model, splits.num_classes, splits.in_channels).to(device, memory_format=compute.memory_format)
    optimizer = build_optimizer(model, cfg.optim)
    normalise = Normalise(splits.mean, splits.std, device, compute.memory_format)
    batches = TrainBatches(splits.train_x, splits.train_y, cfg.trainer.batch_size, augment,
                           normalise, device, cfg.trainer.seed)
    total_steps = cfg.trainer.steps or cfg.trainer.epochs * len(batches)
    scheduler = build_scheduler(optimizer, total_steps, cfg.schedule)
    return Setup(model, optimizer, scheduler, batches, splits, normalise, compute, Probes(cfg.probes, model),
                 compile_model(model, compute))


def _require_positive_int(node, key: str) -> None:
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.{key}={value!r} must be a positive integer")
