"""`python -m harness.runs`: the runs of a store, after something went wrong.

    python -m harness.runs resume SWEEP       # a sweep folder or id, or one job's folder
    python -m harness.runs stale [--uri URI] [--fix]
    python -m harness.runs sync JOB_FOLDER

resume: relaunches exactly the sweep's unfinished jobs (every job that did not finish or
diverge, those that never started included), one at a time, with their original overrides
and job numbers, into their own folders: each continues from its last checkpoint into its
own MLflow run (or starts again if it had none), under the same parent run.

stale: lists the RUNNING runs whose process is gone (from their host and pid tags, or for a job
on a SLURM node from its state in squeue; a run elsewhere is "unknown"); with --fix ends them
KILLED, with a tag saying so.

sync: sends the metrics a job kept in its folder while the store did not answer, and ends the
job's run KILLED if its process is gone (resume continues it).

(A module of its own, not a Hydra app: Hydra's override parsing stays out of its way.)
"""

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from harness import contract
from harness.app import JOB_FILE, PROJECT_ROOT
from harness.errors import HarnessError
from harness.processes import alive
from harness.sweep import DONE, JOBS_FILE, PARENT_FILE, Sweep, read_outcome, stop_signal
from harness.tracking import STORE_ERRORS, MetricBuffer, bound_http_retries, open_experiment, redact

DEFAULT_RUNS = PROJECT_ROOT / "runs"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.runs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    resume = commands.add_parser("resume", help="relaunch a sweep's (or a job's) unfinished jobs")
    resume.add_argument("target", help="a sweep folder, a sweep id (<date>/<time>-<id>) or a job folder")
    resume.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where sweep ids are looked up")
    stale = commands.add_parser("stale", help="RUNNING runs whose process is gone")
    stale.add_argument("--uri", default=f"sqlite:///{DEFAULT_RUNS}/mlflow.db")
    stale.add_argument("--fix", action="store_true", help="end them KILLED")
    sync = commands.add_parser("sync", help="send the metrics a job kept while the store did not answer")
    sync.add_argument("job_folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "resume":
            return resume_target(args.target, args.runs)
        if args.command == "stale":
            return list_stale(args.uri, args.fix)
        return sync_job(args.job_folder)
    except (HarnessError, *STORE_ERRORS) as e:
        print(f"error: {redact(str(e).splitlines()[0])}", file=sys.stderr)
        return 2 if isinstance(e, HarnessError) else 1


# ---------------------------------------------------------------- resume


def resume_target(target: str, runs: Path) -> int:
    path = Path(target)
    if (path / PARENT_FILE).is_file():
        return resume_sweep(path)
    if (path / JOB_FILE).is_file():
        status = relaunch(path, json.loads((path / JOB_FILE).read_text())["overrides"])
        return 0 if read_outcome(path) in DONE else status or 1
    if (runs / "multirun" / target / PARENT_FILE).is_file():
        return resume_sweep(runs / "multirun" / target)
    raise HarnessError(f"{target} is neither a sweep folder, a job folder with {JOB_FILE}, nor a sweep id "
                       f"under {runs / 'multirun'}")


def resume_sweep(folder: Path) -> int:
    jobs = json.loads((folder / JOBS_FILE).read_text())
    todo = [(num, overrides) for num, overrides in enumerate(jobs) if read_outcome(folder / str(num)) not in DONE]
    print(f"sweep {folder}: {len(jobs) - len(todo)} of {len(jobs)} jobs done, resuming {len(todo)}", flush=True)
    sweep = Sweep.reopen(folder)
    for num, overrides in todo:
        job = folder / str(num)
        job.mkdir(exist_ok=True)
        if not (job / JOB_FILE).is_file():  # it never made a run: it starts again, in its sweep
            (job / JOB_FILE).write_text(json.dumps({"sweep_dir": str(folder), "num": num, "overrides": overrides,
                                                    "run_id": None}))
        status = relaunch(job, overrides)
        if status >= 128 or stop_signal(folder):  # the resume was stopped too
            (folder / "stop").write_text(str(status - 128 if status >= 128 else stop_signal(folder)))
            break
    failed = sweep.end(completed=True)
    if stopped := stop_signal(folder):
        return 128 + stopped
    return 1 if failed else 0


def relaunch(job: Path, overrides: list) -> int:
    """The job again, as a single Hydra run into its own folder (its job.json says which sweep,
    number and run it is). SIGTERM and SIGINT to this process are passed on to it."""
    print(f"job {job}: {' '.join(redact(o) for o in overrides)}", flush=True)
    command = [sys.executable, "-m", "harness", *overrides, f"hydra.run.dir={job}"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)
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
            client.set_tag(run.info.run_id, contract.OUTCOME, "killed")
            client.set_tag(run.info.run_id, contract.KILLED_BY, "harness.runs stale --fix: its process was gone")
            client.set_terminated(run.info.run_id, "KILLED")
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
    if not (folder / JOB_FILE).is_file():
        raise HarnessError(f"{folder} is not a job folder: it has no {JOB_FILE}")
    job = json.loads((folder / JOB_FILE).read_text())
    client, _ = open_experiment(job["uri"], job["experiment"])
    sent = MetricBuffer(client, job["run_id"], folder).send_kept()
    run = client.get_run(job["run_id"])
    tags = run.data.tags
    gone = run.info.status == "RUNNING" and tags.get("host") == socket.gethostname() and tags.get("pid") and \
        alive(int(tags["pid"]), tags.get("pid_start")) is False
    if gone:
        client.set_tag(run.info.run_id, contract.OUTCOME, "killed")
        client.set_tag(run.info.run_id, contract.KILLED_BY, "harness.runs sync: its process was gone")
        client.set_terminated(run.info.run_id, "KILLED")
    print(f"{folder}: sent {sent} kept metric points to run {run.info.run_id}"
          + ("; its process was gone: ended KILLED (python -m harness.runs resume continues it)" if gone else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
