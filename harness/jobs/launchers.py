"""Hydra's submitit launchers (`hydra/launcher=slurm`, `submitit_slurm`, `submitit_local`), with
one change made in the sweep's process: a job that ends without a result is recorded as killed
and the sweep goes on.

hydra-submitit-launcher collects results with `job.results()` in job order; a job that wrote
none (scancel, a node failure, SIGKILL after SLURM's KillWait, out of `max_num_timeout`
requeues) raises there and aborts the whole sweep while its other jobs still run, and the
sweep's end would then take their runs for dead. Hydra loads launchers only from its
`hydra_plugins` package, so rather than ship a plugin of our own, the sweep's callback
(harness.jobs.sweep) wraps submitit's `Job.results` for the sweep's process: such a job returns
"killed", its folder and MLflow run say what happened, `python -m harness.runs resume`
continues it, and the sweep exits 1.
"""

import logging

from hydra.core.utils import JobReturn, JobStatus

from harness.jobs.outcome import Outcome

log = logging.getLogger(__name__)


def uses_submitit(config) -> bool:
    return "submitit" in str(config.hydra.launcher.get("_target_", ""))


def record_jobs_without_result_as_killed() -> None:
    """From now on in this process, submitit's Job.results gives "killed" for a job that
    produced no result, instead of raising."""
    from submitit.core import core
    from submitit.core.utils import UncompletedJobError

    results = core.Job.results
    if getattr(results, "harness", False):
        return

    def results_or_killed(job):
        try:
            return results(job)
        except UncompletedJobError:
            log.warning("job %s ended without a result: recorded as killed", job.job_id)
            return [JobReturn(status=JobStatus.COMPLETED, _return_value=Outcome.KILLED)]

    results_or_killed.harness = True
    core.Job.results = results_or_killed
