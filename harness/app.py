"""The Hydra app: `python -m harness [overrides]`, `python -m harness -m <sweep>`.

Before Hydra starts anything, the command line is composed into every job's config and
checked (harness.config): a value of the wrong type, an unknown key or config choice, and for
a single run any bad value, is one line and exit status 2, with nothing written.

One job = build (data, model, optimiser), open an MLflow run, train, record the outcome. A
failed or diverged job of a sweep is recorded and the sweep goes on; the process's exit
status still reports failures.
"""

import logging
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from harness import contract
from harness.augment import Augment
from harness.batches import Normalise, TrainBatches
from harness.compute import apply as apply_compute
from harness.compute import compile_model, resolve_compute
from harness.config import (COMPOSITION_ERRORS, load_data, make_model, make_schedule, one_line, optimizer_factory,
                            validate)
from harness.data import Splits
from harness.errors import ConfigError, HarnessError
from harness.models import count_parameters
from harness.optim import build_optimizer, build_scheduler
from harness.probes import Probes
from harness.sweep import read_parent, write_outcome
from harness.tracking import JobRun, device_name, open_experiment
from harness.train import Setup, train

log = logging.getLogger("harness")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"

# cached resolvers are evaluated once per config, and Hydra copies the cache into every job
OmegaConf.register_new_resolver("harness.root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver(
    "harness.stamp", lambda: time.strftime("%Y-%m-%d/%H-%M-%S-") + secrets.token_hex(3), use_cache=True, replace=True)


@dataclass
class JobInfo:
    """Where Hydra put this job: output folder, sweep folder (None for a single run), overrides,
    and the config file chosen for each group."""

    output_dir: Path
    log_file: Path
    sweep_dir: Path | None
    num: int
    overrides: list
    choices: dict = field(default_factory=dict)

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        hc = HydraConfig.get()
        output_dir = Path(hc.runtime.output_dir)
        in_sweep = hc.mode == RunMode.MULTIRUN
        choices = {group: choice for group, choice in hc.runtime.choices.items()
                   if choice is not None and not group.startswith(("hydra/", "schema/"))}
        return cls(output_dir, output_dir / f"{hc.job.name}.log", Path(hc.sweep.dir) if in_sweep else None,
                   hc.job.num if in_sweep else 0, list(hc.overrides.task), choices)


def main() -> None:
    """Entry point: check every job's config in one line each, then hand over to Hydra."""
    try:
        check_command_line(sys.argv[1:])
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg) -> str:
    return run_job(cfg, JobInfo.from_hydra())


def check_command_line(argv: list) -> None:
    """Compose the config of every job the command line asks for; raise ConfigError on the first
    that does not compose, and for a single run on any bad value (harness.config.validate).
    A sweep's jobs with bad values still run, and are recorded as failed."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun \
            or args.config_path or args.config_dir:
        return  # Hydra's own business
    config_name = args.config_name or "config"
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            if not args.multirun:
                validate(compose(config_name, overrides=args.overrides))
                return
            for overrides in sweep_jobs(config_name, args.overrides):
                compose(config_name, overrides=overrides)
    except COMPOSITION_ERRORS as e:
        raise ConfigError(one_line(e)) from None


def sweep_jobs(config_name: str, overrides: list) -> list:
    """Each job's overrides, as Hydra's basic sweeper will make them: the preset's
    hydra.sweeper.params, then the command line's, expanded into their cartesian product."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    primary = compose(config_name, overrides=fixed, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (primary.hydra.sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params + list(overrides)), None)
    return [job for batch in batches for job in batch]


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
        parent = read_parent(job.sweep_dir) if job.sweep_dir is not None else None
        try:
            setup = build(cfg)
        except HarnessError:
            if parent is not None:  # the sweep records every job, the invalid ones too
                run = JobRun.create(client, experiment_id, cfg, job, {}, parent)
            raise
        run = JobRun.create(client, experiment_id, cfg, job, {
            "device": device_name(setup.device), **setup.compute.describe(),
            "num_parameters": count_parameters(setup.model)}, parent)
        run.log_text(setup.probes.layer_table(), contract.LAYER_TABLE)
        outcome = train(setup, cfg.trainer, run.metrics)
        for text, name in ((setup.probes.shift_table(), contract.SHIFT_TABLE),
                           (setup.probes.sample_table(), contract.SHIFT_SAMPLE)):
            if text:
                run.log_text(text, name)
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
    validate(cfg)
    compute = resolve_compute(cfg.trainer)
    apply_compute(compute)
    torch.manual_seed(cfg.trainer.seed)
    splits = splits or load_data(cfg.data)
    validate(cfg, splits.image_size)  # sizes a dataset only tells once read
    device = compute.device
    model = make_model(cfg.model, splits.num_classes, splits.in_channels).to(device, memory_format=compute.memory_format)
    optimizer = build_optimizer(model, optimizer_factory(cfg.optim), cfg.optim.get("weight_decay", 0.0),
                                cfg.optim.get("decay_norm_and_bias", False))
    normalise = Normalise(splits.mean, splits.std, device, compute.memory_format)
    augment = Augment(cfg.augment.flip, cfg.augment.crop, cfg.augment.pad)
    batches = TrainBatches(splits.train_x, splits.train_y, cfg.trainer.batch_size, augment,
                           normalise, device, cfg.trainer.seed)
    total_steps = cfg.trainer.steps or cfg.trainer.epochs * len(batches)
    scheduler = build_scheduler(optimizer, total_steps, make_schedule(cfg.schedule))
    probes = Probes(cfg.probes, model, normalise(splits.train_x[:2].to(device)))
    return Setup(model, optimizer, scheduler, batches, splits, normalise, compute, probes, compile_model(model, compute))
