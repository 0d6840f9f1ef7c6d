"""What `python -m harness.runs` does (harness.runs is its command line): resume a sweep's
unfinished jobs, find and end runs whose process is gone, send the metrics a job kept while
the store did not answer."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from harness.config import COMPOSITION_ERRORS
from harness.errors import ConfigError, HarnessError
from harness.jobs.folder import JOB_FILE, JobFolder, JobRecord
from harness.jobs.job import CHANGED_ENV, PROJECT_ROOT, JobInfo, compose_today
from harness.jobs.processes import IN_USE, InUse, alive, die_with_parent, hold, holder
from harness.jobs.sweep import JOBS_FILE, PARENT_FILE, Sweep, read_parent, request_stop, stop_signal
from harness.tracking.store import (MetricBuffer, bound_http_retries, end_killed, flatten,
                                    open_experiment, redact)


# ---------------------------------------------------------------- resume


def resume_target(target: str, runs: Path, allow_changed: bool = False) -> int:
    path = Path(target)
    if (path / PARENT_FILE).is_file():
        return resume_sweep(path, allow_changed)
    if JobFolder(path).has_record():
        check_not_held([path])
        changes = check_unchanged([path], allow_changed)
        status = relaunch(path, JobFolder(path).read().overrides, changes.get(path))
        if status == IN_USE:  # another resume's job took the folder first
            return status
        return 0 if JobFolder(path).done() else status or 1
    if (runs / "multirun" / target / PARENT_FILE).is_file():
        return resume_sweep(runs / "multirun" / target, allow_changed)
    raise HarnessError(f"{target} is neither a sweep folder, a job folder with {JOB_FILE}, nor a sweep id "
                       f"under {runs / 'multirun'}")


def resume_sweep(folder: Path, allow_changed: bool = False) -> int:
    with hold(folder):  # one resume of a sweep at a time
        jobs = json.loads((folder / JOBS_FILE).read_text())
        todo = [(num, overrides) for num, overrides in enumerate(jobs) if not JobFolder(folder / str(num)).done()]
        check_not_held([folder / str(num) for num, _ in todo])
        changes = check_unchanged([folder / str(num) for num, _ in todo], allow_changed)
        print(f"sweep {folder}: {len(jobs) - len(todo)} of {len(jobs)} jobs done, resuming {len(todo)}", flush=True)
        return _resume_jobs(folder, todo, changes)


def _resume_jobs(folder: Path, todo: list, changes: dict) -> int:
    sweep = Sweep.reopen(folder)
    store = read_parent(folder)
    for num, overrides in todo:
        job = JobFolder(folder / str(num))
        job.path.mkdir(exist_ok=True)
        if not job.has_record():  # it never made a run: it starts again, in its sweep
            job.write(JobRecord(folder, num, overrides, uri=store["uri"], experiment=store["experiment"]))
        status = relaunch(job.path, overrides, changes.get(job.path))
        if status == IN_USE:  # a job resumed on its own took the folder first: it is not this sweep's to end
            return status
        if status >= 128 or stop_signal(folder):  # the resume was stopped too
            request_stop(folder, status - 128 if status >= 128 else stop_signal(folder))
            break
    failed = sweep.end(completed=True)
    if stopped := stop_signal(folder):
        return 128 + stopped
    return 1 if failed else 0


def check_not_held(jobs: list) -> None:
    """Raise InUse if a process still runs one of these job folders (it holds the folder)."""
    for job in jobs:
        if job.is_dir() and (who := holder(job)):
            raise InUse(f"job {job} is in use by {who}: it is still running, not resumed")


def check_unchanged(jobs: list, allow_changed: bool) -> dict:
    """What changed, for each job folder that recorded what it started with, between that and
    what a resume would train now: {folder: "data.seed 0 -> 1; git commit abc -> def"}. Raise
    ConfigError naming the first unless allow_changed."""
    changes = {job: what for job in jobs if (what := changed_since_start(job))}
    if changes and not allow_changed:
        job, what = next(iter(changes.items()))
        others = f" (and {len(changes) - 1} more of its jobs)" if len(changes) > 1 else ""
        raise ConfigError(f"job {job} changed since it started: {what}{others}; not resumed (--allow-changed "
                          "resumes it anyway, training the config it started with)")
    for job in changes:  # the resumed job trains its started config, typed by today's schema: check it can
        try:
            JobInfo.started_config(job, compose_today(JobFolder(job).read().overrides))
        except ConfigError as e:
            raise ConfigError(f"job {job} cannot be resumed even with --allow-changed: {e}") from None
    return changes


def changed_since_start(job: Path) -> str | None:
    """How today's config (conf/ composed with the job's overrides, as a relaunch composes it)
    and code differ from those the job recorded when it started; None if they do not, or if it
    recorded none (it never started, or started before the harness recorded them)."""
    saved = JobFolder(job).read() if JobFolder(job).has_record() else None
    recorded = saved.recorded if saved else None
    if not isinstance(recorded, dict):
        return None
    try:
        today = compose_today(saved.overrides)
    except ConfigError as e:
        return f"conf/ no longer composes its overrides ({e})"
    now = JobInfo.state(today)
    changes = [f"{key.replace('_', ' ')} {str(recorded.get(key))[:12]} -> {now[key][:12]}"
               for key in ("git_commit", "git_dirty") if recorded.get(key) != now[key]]
    if recorded.get("config_sha256") != now["config_sha256"]:
        changes.insert(0, config_changes(job, today))
    return "; ".join(changes) or None


def config_changes(job: Path, today) -> str:
    """The config values that differ between the job's saved config and today's: `data.seed 0 -> 1`."""
    try:
        before, after = flatten(OmegaConf.load(JobFolder(job).saved_config)), flatten(today)
    except (OSError, *COMPOSITION_ERRORS):
        return "its config (its saved copy cannot be read to say where)"
    differ = [f"{key} {before.get(key, '(none)')} -> {after.get(key, '(none)')}"
              for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
    return ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "") or "its config"


def relaunch(job: Path, overrides: list, changed: str | None = None) -> int:
    """The job again, as a single Hydra run into its own folder (its job.json says which sweep,
    number and run it is), keeping the config Hydra saved there when it started. SIGTERM and
    SIGINT to this process are passed on to it; if this process dies, the kernel sends it
    SIGTERM (it checkpoints and stops: no orphan trains on). `changed`: what changed since the
    job started, when it resumes anyway (--allow-changed): it then trains its saved config."""
    print(f"job {job}: {' '.join(redact(o) for o in overrides)}", flush=True)
    keep_saved = ["hydra.output_subdir=null"] if JobFolder(job).saved_config.is_file() else []
    command = [sys.executable, "-m", "harness", *overrides, f"hydra.run.dir={job}", *keep_saved]
    env = {**os.environ, **({CHANGED_ENV: changed} if changed else {})}
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, preexec_fn=die_with_parent)
    forward = lambda signum, frame: process.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status if status >= 0 else 128 - status  # killed by a signal: Popen gives -N


# ---------------------------------------------------------------- stale runs


def list_stale(uri: str, fix: bool) -> int:
    client = _client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=50000) if experiments else []
    here = socket.gethostname()
    stale = []
    for run in running:
        tags = run.data.tags
        if tags.get("host") == here and tags.get("pid"):
            state = {True: "running", False: "stale", None: "unknown"}[alive(int(tags["pid"]), tags.get("pid_start"))]
        elif tags.get("slurm_job_id") and shutil.which("squeue"):  # a job on a cluster node: ask SLURM
            state = slurm_state(tags["slurm_job_id"])
        else:
            state = f"unknown (process on {tags.get('host', 'an unknown host')})"
        print(f"{run.info.run_id}  {state:40s}  {run.info.run_name}")
        if state == "stale":
            stale.append(run)
    if fix:
        for run in stale:
            end_killed(client, run.info.run_id, "harness.runs stale --fix: its process was gone")
    print(f"{len(running)} running, {len(stale)} stale" + (", ended KILLED" if fix and stale else ""))
    return 0


SLURM_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
               "CONFIGURING", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT"}


def slurm_state(job_id: str) -> str:
    """running (SLURM has the job in a live state), stale (it ended, or SLURM no longer knows
    it), or unknown (squeue did not answer: a run is never ended on that)."""
    try:
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "unknown (squeue did not answer)"
    if queued.returncode != 0 and "Invalid job id" not in queued.stderr:
        return f"unknown (squeue: {queued.stderr.strip()[:80]})"
    return "running" if set(queued.stdout.split()) & SLURM_ALIVE else "stale"


def _client(uri: str):
    """A client of an existing store (stale creates nothing)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise HarnessError(f"no MLflow store at {uri}")
    if uri.startswith(("http://", "https://")):
        bound_http_retries(60)
    return MlflowClient(tracking_uri=uri)


# ---------------------------------------------------------------- sync


def sync_job(folder: Path) -> int:
    if not JobFolder(folder).has_record():
        raise HarnessError(f"{folder} is not a job folder: it has no {JOB_FILE}")
    job = JobFolder(folder).read()
    client, _ = open_experiment(job.uri, job.experiment)
    sent = MetricBuffer(client, job.run_id, folder).send_kept()
    run = client.get_run(job.run_id)
    tags = run.data.tags
    gone = run.info.status == "RUNNING" and tags.get("host") == socket.gethostname() and tags.get("pid") and \
        alive(int(tags["pid"]), tags.get("pid_start")) is False
    if gone:
        end_killed(client, run.info.run_id, "harness.runs sync: its process was gone")
    print(f"{folder}: sent {sent} kept metric points to run {run.info.run_id}"
          + ("; its process was gone: ended KILLED (python -m harness.runs resume continues it)" if gone else ""))
    return 0
