"""The Hydra app: `python -m harness [overrides]`, `python -m harness -m <sweep>`.

Before Hydra starts anything, the command line is composed into every job's config and
checked (harness.config): a value of the wrong type, an unknown key or config choice, and for
a single run any bad value, is one line and exit status 2, with nothing written.

One job = build (data, model, optimiser), open an MLflow run, train, record the outcome. A
failed or diverged job of a sweep is recorded and the sweep goes on; the process's exit
status still reports failures.
"""

import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import NamedTuple

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness import contract
from harness.jobs import mps
from harness.training.augment import Augment
from harness.training.batches import Normalise, TrainBatches
from harness.jobs.checkpoint import Checkpoints
from harness.jobs.job import CHANGED_ENV, CONF_DIR, JobInfo
from harness.jobs.outcome import Outcome
from harness.jobs.signals import Interrupted, StopRequests, in_submitit_job
from harness.training.compute import apply as apply_compute
from harness.training.compute import compile_model, resolve_compute
from harness.config import (COMPOSITION_ERRORS, check_store, load_data, make_model, make_schedule, model_labels,
                            one_line, optimizer_factory, plain, validate)
from harness.data import Splits
from harness.errors import ConfigError, HarnessError
from harness.files import WriteError, reason
from harness.models.resnet import count_parameters
from harness.training.optim import build_optimizer, build_scheduler
from harness.probes import Probes
from harness.jobs.processes import IN_USE, InUse, age, die_with_parent, hold, in_joblib_worker
from harness.jobs.sweep import JOBS_FILE, expand_sweep, read_parent, stop_signal
from harness.tracking.store import (STORE_ERRORS, JobRun, TrackingError, device_name, from_the_store, job_name,
                                    open_experiment)
from harness.training.train import Setup, train
from harness.usage import answer_help

log = logging.getLogger("harness")


def main() -> None:
    """Entry point: check every job's config in one line each, then hand over to Hydra."""
    answer_help(sys.argv[1:])  # the `harness` command comes here directly
    try:
        check_command_line(sys.argv[1:])
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg) -> Outcome:
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
    parsed = []
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)  # a syntax error: one line too
        check_recipe_and_trainer(parsed)
        swept = [o.input_line for o in parsed if o.is_sweep_override()]
        if swept and not args.multirun:
            raise ConfigError(f"{swept[0]} gives several values, which only a sweep takes: add -m "
                              f"(python -m harness -m {' '.join(args.overrides)})")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            if not args.multirun:
                cfg = compose(config_name, overrides=args.overrides)
                validate(cfg)
                check_runs_folder(cfg)
                return
            for overrides in sweep_jobs(config_name, args.overrides):
                compose(config_name, overrides=overrides)
    except COMPOSITION_ERRORS as e:
        raise ConfigError(one_line(e)) from None
    except ValueError as e:  # `model=null`: Hydra's message does not say which group
        emptied = [o.input_line for o in parsed if o.value() is None and "." not in o.key_or_group]
        raise ConfigError(f"{emptied[0]}: a config group cannot be set to null on the command line: name "
                          "one of its choices, or leave it out" if emptied else one_line(e)) from None


def check_recipe_and_trainer(parsed: list) -> None:
    """A recipe sets the training length and batch size itself, after the trainer group: a
    trainer preset named with it would be silently overridden. `parsed`: Hydra's Overrides."""
    named = {o.key_or_group: o for o in parsed}
    recipe, trainer = named.get("recipe"), named.get("trainer")
    if recipe is not None and recipe.value() is not None and trainer is not None and trainer.value() != "default":
        raise ConfigError(f"{recipe.input_line} sets the training length and batch size itself: drop "
                          f"{trainer.input_line}, or shorten the recipe with trainer.steps=N")


def sweep_jobs(config_name: str, overrides: list) -> list:
    """Each job's overrides, as Hydra's basic sweeper will make them (harness.jobs.sweep.expand_sweep)."""
    fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
    primary = compose(config_name, overrides=fixed, return_hydra_config=True)
    check_runs_folder(primary)
    return expand_sweep(dict(primary.hydra.sweeper.get("params") or {}), overrides)


def check_runs_folder(cfg) -> None:
    """paths.runs must be a folder this process can write: Hydra would fail there with a traceback."""
    check_store(cfg)  # a sweep's jobs are validated only as they run: its store is checked here
    if not str(cfg.paths.runs).strip():
        raise ConfigError("paths.runs='' must be a folder")
    runs = Path(cfg.paths.runs)
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"paths.runs={str(runs)!r} cannot be created: {e.strerror}") from None
    if not os.access(runs, os.W_OK):
        raise ConfigError(f"paths.runs={str(runs)!r} is not writable: choose another folder")


class Ended(NamedTuple):
    """How a job ended, and the status its process exits with instead of going on (a single
    run that did not finish, a stopped job on SLURM); None: it returns its outcome."""

    outcome: Outcome
    exit_status: int | None = None


def run_job(cfg, job: JobInfo) -> Outcome:
    """Run one job; return its outcome, also written to its folder. A single run exits non-zero instead of returning a failure: 2 for a
    bad value or dataset, 1 for other errors, 128 + N when signal N stopped it, 3 (IN_USE),
    with nothing written, when another process runs the job (it holds the job folder)."""
    try:
        with hold(job.output_dir):
            return _run_held_job(cfg, job)
    except InUse as e:
        log.error("error: %s", e)
        raise SystemExit(IN_USE) from None


def _run_held_job(cfg, job: JobInfo) -> Outcome:
    if changed := os.environ.pop(CHANGED_ENV, None):  # harness.runs resume --allow-changed, which checked it
        cfg, job.changed = JobInfo.started_config(job.output_dir, cfg), changed
        log.warning("resuming with the config it started with; changed since: %s", changed)
    job.recorded = job.recorded or JobInfo.state(cfg)
    ended, parent = Ended(Outcome.FAILED), os.getppid()  # failed: what a second signal or an exit leaves
    try:
        ended = _run_job(cfg, job)
    finally:
        with contextlib.suppress(WriteError):  # a full disk: without an outcome, a resume runs the job again
            job.folder.write_outcome(ended.outcome)
        if in_joblib_worker() and os.getppid() != parent:  # the sweep's process died: no orphan stays
            logging.shutdown()
            os._exit(1)
    if ended.exit_status is not None:
        raise SystemExit(ended.exit_status)
    return ended.outcome


def _run_job(cfg, job: JobInfo) -> Ended:
    if job.sweep_dir is not None and stop_signal(job.sweep_dir):
        log.warning("not started: the sweep was told to stop")
        return Ended(Outcome.KILLED)
    done = job.folder.outcome()
    if done and done.done:  # SLURM reran a job that had already finished (a late requeue)
        log.warning("not run again: this job already %s", done)
        return Ended(done)
    if in_joblib_worker():
        die_with_parent()  # if the sweep's process dies, stop as if sent SIGTERM
    run = None
    with StopRequests() as stop:
        try:
            client, experiment_id = open_experiment(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.timeout)
            parent = read_parent(job.sweep_dir) if job.sweep_dir is not None else None
            startup = _startup_of_process()
            try:
                setup = build(cfg, startup=startup)
            except Exception as e:
                if parent is not None or not isinstance(e, HarnessError):  # a sweep records every job
                    run = _open_run(client, experiment_id, cfg, job, parent)
                raise
            run = _open_run(client, experiment_id, cfg, job, parent)
            run.set_tags({"device": device_name(setup.device), **setup.compute.describe(),
                          "num_parameters": count_parameters(setup.model), contract.CLASSES: setup.splits.num_classes,
                          **({"resumed_with_changed_config": job.changed} if job.changed else {})})
            _log_tables(run, setup.probes)
            run.metrics.add(0, {f"{contract.STARTUP}{phase}": seconds for phase, seconds in startup.items()})
            checkpoints = Checkpoints(job.output_dir, cfg.trainer.checkpoint_every, run.run_id, stop)
            trained = train(setup, cfg.trainer, run.metrics, checkpoints=checkpoints, label=_label(job, parent))
            _log_tables(run, setup.probes)
            run.log_artifacts(job, cfg, setup.model)
            run.finish(trained.status, trained.final)
            checkpoints.path.unlink(missing_ok=True)  # nothing left to resume
            return Ended(trained.status)
        except BaseException as e:
            return _record_failure(e, run, job, stop)


def _log_tables(run: JobRun, probes: Probes) -> None:
    """The probes' tables known so far: before training (layers.csv), so a run that fails has
    them too, and once it has ended."""
    for name, text in probes.tables().items():
        run.log_text(text, name)


def _startup_of_process() -> dict:
    """Seconds this process took to reach its first job (starting Python, imports, a joblib
    worker's start): counted for that first job only."""
    global _first_job
    first, _first_job = _first_job, False
    seconds = age(os.getpid()) if first else None
    return {"process_s": seconds} if seconds is not None else {}


_first_job = True


def _label(job: JobInfo, parent: dict | None) -> str:
    """`job 3/8 d56 plain` for a sweep's job, shown with its progress; nothing for a single run."""
    if parent is None:
        return ""
    jobs = job.sweep_dir / JOBS_FILE
    total = len(json.loads(jobs.read_text())) if jobs.is_file() else "?"  # a sweep from before jobs.json
    return f"job {job.num + 1}/{total} {job_name(job.overrides, parent['swept'])}"


def _open_run(client, experiment_id, cfg, job: JobInfo, parent) -> JobRun:
    """The job's run: a new one, or the one a resumed job started (job.json)."""
    if job.run_id:
        return JobRun.reopen(client, job.run_id, job)
    run = JobRun.create(client, experiment_id, cfg, job, parent)
    run.set_tags({mps.TAG: mps.client_of(), **model_labels(cfg.model)})
    job.run_id = run.run_id
    job.save(cfg.tracking)
    return run


def _record_failure(error: BaseException, run: JobRun | None, job: JobInfo, stop: StopRequests) -> Ended:
    """Log the error (one line if it is the user's to fix), end the run, and return the outcome
    (a sweep goes on) and, for a single run, the status to exit with.

    A job on SLURM stopped by a signal returns nothing, so that submitit writes no result:
    SLURM reruns a requeued job (SIGTERM), submitit requeues one warned by SIGUSR2, and the
    rerun resumes from the checkpoint into the same run."""
    if isinstance(error, Interrupted):
        log.warning("%s at a step boundary: checkpoint saved in %s; resume with python -m harness.runs resume %s",
                    error, job.output_dir, job.sweep_dir or job.output_dir)
    elif isinstance(error, WriteError):  # a full disk: the run ends KILLED, to be continued
        log.error("error: %s; once there is room: python -m harness.runs resume %s", error,
                  job.sweep_dir or job.output_dir)
    elif isinstance(error, HarnessError):
        log.error("error: %s", error)  # the user's to fix: one line, no traceback
    elif isinstance(error, OSError) and not from_the_store(error):  # a local file: named, with its errno
        log.error("error: %s%s", f"{error.filename}: " if error.filename else "", reason(error))
    elif isinstance(error, STORE_ERRORS):
        log.error("error: the MLflow store failed: %s", str(error).splitlines()[0] if str(error) else type(error))
    elif isinstance(error, Exception):
        log.exception("job failed: %s", error)
    if run is not None:
        run.fail(error, job)
    if not isinstance(error, Exception):  # KeyboardInterrupt (a second signal), SystemExit: let it through
        raise error
    if isinstance(error, Interrupted) and (job.sweep_dir is None or in_submitit_job()):
        if error.signum == signal.SIGUSR2:
            try:
                stop.pass_on(error.signum)  # submitit's: it requeues the job and exits
            except Exception as e:  # out of requeues (max_num_timeout): the launcher records it killed
                log.warning("not requeued: %s", str(e).strip().splitlines()[0][:200])
        return Ended(Outcome.KILLED, 128 + error.signum)
    outcome = Outcome.KILLED if isinstance(error, (Interrupted, WriteError)) else Outcome.FAILED
    if job.sweep_dir is None:
        bad_input = isinstance(error, HarnessError) and not isinstance(error, (TrackingError, WriteError))
        return Ended(outcome, 2 if bad_input else 1)
    return Ended(outcome)


def build(cfg, splits: Splits | None = None, startup: dict | None = None) -> Setup:
    """Everything a job trains with; raises HarnessError naming any bad value.

    `splits`: the dataset, already loaded (the benchmark trains several setups on one).
    `startup`: gets the seconds spent initialising CUDA, loading the data and building in all."""
    started, startup = time.perf_counter(), startup if startup is not None else {}
    validate(cfg)
    compute = resolve_compute(cfg.trainer)
    apply_compute(compute)
    if compute.device.type == "cuda":  # the driver and the context: what the first kernel would pay
        torch.zeros(1, device=compute.device)
        startup["cuda_init_s"] = time.perf_counter() - started
    torch.manual_seed(cfg.trainer.seed)
    loading = time.perf_counter()
    splits = splits or load_data(cfg.data)
    startup["data_s"] = time.perf_counter() - loading
    validate(cfg, splits.image_size, len(splits.train_x))  # sizes a dataset only tells once read
    device = compute.device
    model = make_model(cfg.model, splits.num_classes, splits.in_channels).to(device, memory_format=compute.memory_format)
    optimizer = build_optimizer(model, optimizer_factory(cfg.optim), cfg.optim.get("weight_decay", 0.0),
                                cfg.optim.get("decay_norm_and_bias", False))
    normalise = Normalise(splits.mean, splits.std, device, compute.memory_format)
    augment = Augment(**plain(cfg.augment))
    batches = TrainBatches(splits.train_x, splits.train_y, cfg.trainer.batch_size, augment,
                           normalise, device, cfg.trainer.seed)
    total_steps = cfg.trainer.steps or cfg.trainer.epochs * len(batches)
    scheduler = build_scheduler(optimizer, total_steps, make_schedule(cfg.schedule))
    probes = Probes(cfg.probes, model, normalise(splits.train_x[:2].to(device)), splits.num_classes)
    startup["build_s"] = time.perf_counter() - started
    return Setup(model, optimizer, scheduler, batches, splits, normalise, compute, probes, compile_model(model, compute))
