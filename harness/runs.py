"""`python -m harness.runs`: the runs of a store, after something went wrong.

    python -m harness.runs resume SWEEP [--allow-changed]  # a sweep folder or id, or one job's folder
    python -m harness.runs stale [--uri URI] [--fix]
    python -m harness.runs sync JOB_FOLDER

resume: relaunches exactly the sweep's unfinished jobs (every job that did not finish or
diverge, those that never started included), one at a time, with their original overrides
and job numbers, into their own folders: each continues from its last checkpoint into its
own MLflow run (or starts again if it had none), under the same parent run. A job that
another process still runs (it holds its folder) is not relaunched: one line, exit status 3.
A job whose config, composed from today's conf/ with its overrides, or whose code (git
commit, dirty state) differs from what it started with is not resumed either (exit status 2)
unless --allow-changed: it then trains the config it started with (.hydra/config.yaml), and
its run is tagged resumed_with_changed_config.

stale: lists the RUNNING runs whose process is gone (from their host and pid tags, or for a job
on a SLURM node from its state in squeue; a run elsewhere is "unknown"); with --fix ends them
KILLED, with a tag saying so.

sync: sends the metrics a job kept in its folder while the store did not answer, and ends the
job's run KILLED if its process is gone (resume continues it).

(A module of its own, not a Hydra app: Hydra's override parsing stays out of its way.)
"""

import argparse
import sys
from pathlib import Path

DEFAULT_RUNS = Path(__file__).resolve().parents[1] / "runs"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.runs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    resume = commands.add_parser("resume", help="relaunch a sweep's (or a job's) unfinished jobs")
    resume.add_argument("target", help="a sweep folder, a sweep id (<date>/<time>-<id>) or a job folder")
    resume.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where sweep ids are looked up")
    resume.add_argument("--allow-changed", action="store_true",
                        help="resume even if conf/ or the code changed since the job started: train what it recorded")
    stale = commands.add_parser("stale", help="RUNNING runs whose process is gone")
    stale.add_argument("--uri", default=f"sqlite:///{DEFAULT_RUNS}/mlflow.db")
    stale.add_argument("--fix", action="store_true", help="end them KILLED")
    sync = commands.add_parser("sync", help="send the metrics a job kept while the store did not answer")
    sync.add_argument("job_folder", type=Path)
    args = parser.parse_args(argv)
    # what a command needs, imported once it runs: --help answers without torch, Hydra or MLflow
    from harness.errors import HarnessError
    from harness.jobs.processes import IN_USE, InUse
    from harness.jobs.recovery import list_stale, resume_target, sync_job
    from harness.tracking.store import STORE_ERRORS, redact

    try:
        if args.command == "resume":
            return resume_target(args.target, args.runs, args.allow_changed)
        if args.command == "stale":
            return list_stale(args.uri, args.fix)
        return sync_job(args.job_folder)
    except (HarnessError, *STORE_ERRORS) as e:
        print(f"error: {redact(str(e).splitlines()[0])}", file=sys.stderr)
        return IN_USE if isinstance(e, InUse) else 2 if isinstance(e, HarnessError) else 1


if __name__ == "__main__":
    sys.exit(main())
