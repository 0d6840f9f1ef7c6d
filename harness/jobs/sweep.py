"""A multirun sweep's life in MLflow: its parent run, created before any job and ended exactly
once, and the files in the sweep folder through which jobs find their parent, report their
outcome (a job that dies before it can make a run still leaves its outcome), and learn that
the sweep was told to stop.

Files in the sweep folder: `mlflow_parent_run.json` (the parent run), `jobs.json` (every job's
overrides, in job-number order: what `harness.runs resume` relaunches), `stop` (the signal the
sweep got). Each job's folder and its files: harness.jobs.folder.
"""

import atexit
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import RunTag

from harness import contract

from harness.jobs import mps
from harness.files import write_atomically
from harness.jobs.folder import JobFolder
from harness.jobs.launchers import record_jobs_without_result_as_killed, uses_submitit
from harness.jobs.outcome import Outcome
from harness.jobs.processes import worker_children
from harness.jobs.signals import REPEAT_WINDOW_S, STOP_SIGNALS
from harness.tracking.store import (STORE_ERRORS, TrackingError, end_killed, forget_interruption, git_state,
                                    open_experiment, redact, this_process)

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent_run.json"  # in the sweep folder: how jobs find their parent run
JOBS_FILE = "jobs.json"
STOP_FILE = "stop"


class Sweep:
    """The parent run of a multirun sweep: created before any job, ended exactly once."""

    def __init__(self, client, run_id, folder: Path, sweep_id: str):
        self.client, self.run_id, self.folder, self.sweep_id = client, run_id, folder, sweep_id
        self.ended = False

    @classmethod
    def start(cls, config) -> "Sweep":
        folder = Path(config.hydra.sweep.dir)
        sweep_id = f"{folder.parent.name}/{folder.name}"  # <date>/<time>-<random>
        client, experiment_id = open_experiment(config.tracking.uri, config.tracking.experiment,
                                                config.tracking.timeout)
        overrides = list(config.hydra.overrides.task)
        # the launcher and sweeper choices typed (hydra/launcher=...), less the mode Hydra adds itself
        typed = overrides + [o for o in config.hydra.overrides.hydra if not o.startswith("hydra.mode=")]
        params = dict(config.hydra.sweeper.get("params") or {})
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
        swept = list(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))
        # Hydra's runtime.choices is not filled in yet at multirun start: the preset is read from the command line
        preset = next((o.split("=", 1)[1].strip("[]") for o in overrides if o.lstrip("+").startswith("experiment=")), None)
        name = f"{(preset or 'sweep').replace(',', '+')} {folder.name}"  # e.g. depth_residual 23-20-10-356d36
        tags = {contract.RUN_NAME: name, contract.SWEEP_ID: sweep_id, contract.KIND: contract.KIND_SWEEP,
                contract.OVERRIDES: redact(" ".join(typed)), **({contract.PRESET: preset} if preset else {}),
                **this_process(), **git_state(Path(config.paths.root))}
        run = client.create_run(experiment_id, tags=tags, run_name=tags[contract.RUN_NAME])
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / JOBS_FILE, json.dumps(expand_sweep(params, overrides)))
        info = {"run_id": run.info.run_id, "experiment_id": experiment_id, "sweep_id": sweep_id, "swept": swept,
                "preset": preset,
                "uri": config.tracking.uri, "experiment": config.tracking.experiment}
        write_atomically(folder / PARENT_FILE, json.dumps(info))
        log.info("sweep %s: MLflow parent run %s in %s", sweep_id, run.info.run_id, redact(config.tracking.uri))
        return cls(client, run.info.run_id, folder, sweep_id)

    @classmethod
    def reopen(cls, folder: Path, timeout: float = 60) -> "Sweep":
        """The parent of an existing sweep folder, RUNNING again (harness.runs resume)."""
        info = read_parent(folder)
        client, _ = open_experiment(info["uri"], info["experiment"], timeout)
        client.update_run(info["run_id"], status="RUNNING")
        # harness.runs stale must see this process, not the one that was interrupted
        forget_interruption(client, info["run_id"], {**this_process(), contract.OUTCOME: Outcome.RUNNING})
        (folder / STOP_FILE).unlink(missing_ok=True)
        return cls(client, info["run_id"], folder, info["sweep_id"])

    def end(self, completed: bool) -> int:
        """End the parent run; return how many jobs failed. Safe to call twice.

        Outcomes are read from the jobs' own folders rather than from MLflow, so a job that
        failed before it could create its run, or never finished, still counts. A job run
        still RUNNING (its process died) is ended KILLED. The parent is KILLED if the sweep
        was told to stop, FAILED if a job failed or the sweep did not complete.
        """
        if self.ended:
            return 0
        self.ended = True
        outcomes = [JobFolder(folder.parent).outcome() for folder in sorted(self.folder.glob("*/.hydra"))]
        killed = outcomes.count(Outcome.KILLED)
        failed = sum(o is None or not o.done for o in outcomes) - killed  # None: it never ended
        diverged = outcomes.count(Outcome.DIVERGED)
        stopped = stop_signal(self.folder)
        info = read_parent(self.folder)
        try:
            self._end_orphans(info["experiment_id"])
            jobs = self._log_jobs_table(info)  # after the orphans: their outcome is "killed" by now
            self._summarise(info, jobs, outcomes)
            status = "KILLED" if stopped else "FINISHED" if completed and not (failed or killed) else "FAILED"
            self.client.log_batch(self.run_id, tags=[RunTag("jobs", str(len(outcomes))),
                                                     RunTag("jobs_failed", str(failed)),
                                                     RunTag("jobs_killed", str(killed)),
                                                     RunTag("jobs_diverged", str(diverged)),
                                                     RunTag(contract.OUTCOME, status.lower())])
            self.client.set_terminated(self.run_id, status)
        except STORE_ERRORS as e:
            log.error("could not end the sweep's parent run %s: %s", self.run_id, str(e).splitlines()[0])
        planned = len(json.loads((self.folder / JOBS_FILE).read_text())) if (self.folder / JOBS_FILE).is_file() else 0
        summary = f"sweep {self.sweep_id}: {len(outcomes)} jobs, {failed} failed, {killed} killed, {diverged} diverged"
        if planned > len(outcomes):
            summary += f", {planned - len(outcomes)} not started"
        if stopped:
            summary += f", stopped by {signal.Signals(stopped).name}"
        if stopped or killed:
            summary += f" (python -m harness.runs resume {self.folder})"
        (log.warning if failed or killed or not completed else log.info)(summary)
        log.info("browse it: %s", ui_address(info))
        return failed + killed

    def _log_jobs_table(self, info: dict) -> None:
        """The jobs at a glance on the parent run: each job's name, outcome, swept values and
        headline metrics, as an MLflow table (log_table: the UI's artifact view shows it as one)."""
        jobs = self.client.search_runs([info["experiment_id"]], f"tags.`{contract.PARENT}` = '{self.run_id}'",
                                       order_by=["attributes.start_time ASC"], max_results=50000)
        table = {"run": [r.info.run_name for r in jobs], "outcome": [r.data.tags.get(contract.OUTCOME) for r in jobs],
                 **{key: [r.data.params.get(key, r.data.tags.get(contract.choice_tag(key))) for r in jobs]
                    for key in info["swept"]},
                 **{key: [r.data.metrics.get(key) for r in jobs] for key in contract.HEADLINE}}
        self.client.log_table(self.run_id, data=table, artifact_file=contract.JOBS_TABLE)
        return jobs

    def _summarise(self, info: dict, jobs: list, outcomes: list) -> None:
        """The parent run as the sweep's page in the MLflow UI: a description of what was swept
        and how it went, the settings every job shares as params (the swept axes as their
        values), and the best and worst headline metrics, so a collapsed sweep shows in charts."""
        swept = {key: sorted({str(r.data.params.get(key, r.data.tags.get(contract.choice_tag(key)))) for r in jobs},
                             key=_in_order) for key in info["swept"]}
        shared = {key: value for key, value in jobs[0].data.params.items()
                  if all(r.data.params.get(key) == value for r in jobs)} if jobs else {}
        params = {**shared, **{f"swept.{key}": ",".join(values) for key, values in swept.items()}}
        metrics = {}
        for key in contract.HEADLINE:
            values = [r.data.metrics[key] for r in jobs if key in r.data.metrics]
            if values:
                metrics.update({f"jobs_max/{key}": max(values), f"jobs_min/{key}": min(values)})
        counts = ", ".join(f"{n} {outcome}" for outcome, n in
                           sorted({str(o or "never ended"): outcomes.count(o) for o in outcomes}.items()))
        data = shared.get("data._target_", "each job's own").rsplit(".", 1)[-1]
        axes = "; ".join(f"{key} = {', '.join(values)}" for key, values in swept.items()) or "nothing"
        note = (f"Sweep {self.sweep_id}: {len(outcomes)} jobs ({counts or 'none'}) over {axes}, on "
                f"{data} data"
                f"{', preset ' + info['preset'] if info.get('preset') else ''}. "
                + (f"Test accuracy from {metrics[f'jobs_min/{contract.TEST_ACC}']:.4f} to "
                   f"{metrics[f'jobs_max/{contract.TEST_ACC}']:.4f}. " if f"jobs_max/{contract.TEST_ACC}" in metrics else "")
                + f"{contract.VERDICTS}`python -m analysis --sweep {self.sweep_id}` writes them here.")
        try:
            log_summary(self.client, self.run_id, params, metrics, note)
        except STORE_ERRORS as e:  # a param logged before with another value (a resumed sweep): keep the first
            log.warning("sweep %s: the parent run's summary is partly kept: %s", self.sweep_id,
                        str(e).splitlines()[0])

    def _end_orphans(self, experiment_id: str) -> None:
        children = self.client.search_runs(
            [experiment_id],
            f"tags.`{contract.PARENT}` = '{self.run_id}' and attributes.status = 'RUNNING'")
        for run in children:
            end_killed(self.client, run.info.run_id, "the sweep's end: its process was gone")


def _in_order(value: str):
    """Numbers by value (8 before 14), then words."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def log_summary(client, run_id: str, params: dict, metrics: dict, note: str) -> None:
    """The metrics at step 0 and the description, then the params (MlflowClient.log_batch splits
    them into requests the store accepts): last, because a resumed sweep's swept values may have
    grown, and a param keeps its first value."""
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, stamp, 0) for key, value in metrics.items()],
                     tags=[RunTag(contract.NOTE, redact(note))])
    client.log_batch(run_id, params=[Param(key, redact(str(value))[:6000]) for key, value in params.items()])


def ui_address(info: dict) -> str:
    """Where the MLflow UI shows a sweep's experiment, in its model-training view."""
    uri, page = info["uri"], f"#/experiments/{info['experiment_id']}/runs?{contract.UI_MODEL_TRAINING}"
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri} --workers 1, then http://127.0.0.1:5000/{page}"
    return f"{redact(uri).rstrip('/')}/{page}"


def expand_sweep(params: dict, overrides: list) -> list:
    """Each job's overrides, numbered as Hydra's basic sweeper (and the joblib launcher) number
    them: the preset's hydra.sweeper.params, then the command line's, in their cartesian product."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides([f"{key}={value}" for key, value in params.items()] + list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def read_parent(sweep_dir: Path) -> dict:
    path = sweep_dir / PARENT_FILE
    if not path.is_file():
        raise TrackingError(f"{path} is missing: the sweep's MLflow parent run was not created")
    return json.loads(path.read_text())


def stop_signal(sweep_dir: Path) -> int | None:
    """The signal the sweep was told to stop by, if it was."""
    path = sweep_dir / STOP_FILE
    return int(path.read_text()) if path.is_file() else None


def request_stop(sweep_dir: Path, signum: int) -> None:
    """Tell the sweep's jobs that signal `signum` stopped it: none starts after."""
    write_atomically(sweep_dir / STOP_FILE, str(signum))


def stop_sweep_on_signals(sweep_dir: Path) -> None:
    """In the sweep's main process: SIGTERM or SIGINT mark the sweep stopped (no job starts
    after) and are passed to the joblib workers, whose jobs then checkpoint and end KILLED; a
    second one stops at once. Jobs in this process chain to this handler (harness.jobs.signals)."""
    def handler(signum, frame):
        if stop_signal(sweep_dir) is not None:
            if time.monotonic() - handler.first > REPEAT_WINDOW_S:
                raise KeyboardInterrupt
            return  # the same request again (a terminal's Ctrl-C also reaches every worker)
        handler.first = time.monotonic()
        request_stop(sweep_dir, signum)
        log.warning("sweep: %s received, stopping at the next step boundary", signal.Signals(signum).name)
        for pid in worker_children():
            os.kill(pid, signum)

    handler.chain = True
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


class SweepCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun sweep.

    The parent is created in on_multirun_start, before any job (and before any job could
    race on a fresh SQLite file). Hydra skips on_multirun_end when a job raised, so the
    parent is also ended at interpreter exit, marked FAILED (KILLED if stopped). The exit
    status says what happened: 1 if a job failed, 128 + N if signal N stopped the sweep.
    """

    sweep = None

    def on_multirun_start(self, config, **kwargs):
        try:
            self.sweep = Sweep.start(config)
        except Exception as e:  # Hydra turns exceptions from callbacks into warnings: exit here
            print(f"error: the sweep's parent run could not be created: {redact(str(e).splitlines()[0])}",
                  file=sys.stderr)
            raise SystemExit(2) from None
        atexit.register(self.sweep.end, completed=False)
        stop_sweep_on_signals(self.sweep.folder)
        shared = mps.for_sweep(config, self.sweep.folder)  # before the launcher starts any worker
        self.sweep.client.set_tag(self.sweep.run_id, mps.TAG, shared)
        if uses_submitit(config):
            record_jobs_without_result_as_killed()

    def on_multirun_end(self, config, **kwargs):
        if self.sweep is None:
            return
        failed = self.sweep.end(completed=True)
        if stopped := stop_signal(self.sweep.folder):
            raise SystemExit(128 + stopped)
        if failed:
            raise SystemExit(1)  # the sweep went on past failed jobs; the exit status still tells
