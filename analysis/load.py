"""Selecting runs from the MLflow store the harness writes, and reading them into pandas.

Histories are fetched in bulk: from a SQLite store with one SQL query per 500 runs (read
only), from a server with concurrent requests, never one blocking round trip per metric
per run in a row (a sweep of dozens of runs has 150+ metrics each).
"""

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import contract
from harness.errors import HarnessError


class SelectionError(HarnessError):
    """No runs match what was asked for; the message says what exists instead."""


@dataclass
class Selection:
    name: str  # names the report folder: the sweep id, or the experiment name
    parent: object  # the sweep's parent run (mlflow Run), or None
    runs: list  # the job runs

    @property
    def preset(self) -> str | None:
        """The +experiment preset that launched the sweep, where its parent recorded one."""
        return self.parent.data.tags.get(contract.PRESET) if self.parent is not None else None


def open_client(uri: str) -> MlflowClient:
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise SelectionError(f"no MLflow store at {uri}: run a sweep first (python -m harness -m ...)")
    return MlflowClient(tracking_uri=uri)


def select_runs(client, sweep=None, experiment=None, filter_string=None) -> Selection:
    """The jobs of a sweep (default: the most recent), of an experiment, or matching a filter."""
    experiments = client.search_experiments()
    if experiment is not None:
        found = [e for e in experiments if e.name == experiment]
        if not found:
            raise SelectionError(f"no experiment {experiment!r}; known: {', '.join(e.name for e in experiments) or 'none'}")
        experiments = found
    ids = [e.experiment_id for e in experiments]
    if not ids:
        raise SelectionError("the MLflow store has no experiments: run a sweep first")

    if sweep is None and (experiment is not None or filter_string is not None):
        jobs = _search(client, ids, _and("attributes.status != 'RUNNING'", filter_string))
        jobs = [r for r in jobs if r.data.tags.get(contract.KIND) != contract.KIND_SWEEP]
        if not jobs:
            raise SelectionError(f"no finished runs match experiment={experiment!r} filter={filter_string!r}")
        return Selection(experiment or "filtered", None, jobs)

    sweeps = _search(client, ids, f"tags.{contract.KIND} = '{contract.KIND_SWEEP}'",
                     order_by=["attributes.start_time DESC"])
    if not sweeps:
        raise SelectionError("the MLflow store has no sweeps (python -m harness -m ... makes one)")
    if sweep is None:
        parent = sweeps[0]
    else:
        matches = [r for r in sweeps if sweep in (r.data.tags.get(contract.SWEEP_ID), r.info.run_id, r.info.run_name,
                                                  r.data.tags.get(contract.SWEEP_ID, "").split("/")[-1])]
        if not matches:
            known = ", ".join(r.data.tags.get(contract.SWEEP_ID, r.info.run_id) for r in sweeps[:10])
            raise SelectionError(f"no sweep {sweep!r}; recent sweeps: {known}")
        parent = matches[0]
    jobs = _search(client, [parent.info.experiment_id],
                   _and(f"tags.`{contract.PARENT}` = '{parent.info.run_id}'", filter_string))
    if not jobs:
        raise SelectionError(f"sweep {parent.data.tags.get(contract.SWEEP_ID)} has no job runs")
    return Selection(parent.data.tags.get(contract.SWEEP_ID, parent.info.run_id), parent, jobs)


def _and(a, b):
    return a if not b else f"{a} and {b}"


def _search(client, experiment_ids, filter_string, order_by=None):
    try:
        return client.search_runs(experiment_ids, filter_string=filter_string, max_results=50000, order_by=order_by)
    except MlflowException as e:
        if e.error_code != "INVALID_PARAMETER_VALUE":
            raise  # not the filter: the store (python -m analysis reports it)
        raise SelectionError(f"bad filter {filter_string!r}: {str(e).splitlines()[0]}") from None


def runs_frame(runs) -> pd.DataFrame:
    """One row per run: identity, params (numbers where they are numbers), tags, last metric values."""
    rows = []
    for run in runs:
        tags = run.data.tags
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
               "diverged": tags.get(contract.DIVERGED) == "true", "job_num": tags.get(contract.JOB_NUM)}
        row.update({f"param.{k}": _typed(v) for k, v in run.data.params.items()})
        row.update({f"tag.{k}": v for k, v in tags.items()
                    if k.startswith(contract.CHOICE) or k in (contract.MODEL_LABELS, contract.CLASSES)})
        row.update({f"metric.{contract.current_name(k)}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["job_num"] = pd.to_numeric(frame["job_num"], errors="coerce")  # single runs have none
    return frame.sort_values(["job_num", "run_name"]).reset_index(drop=True)


def _typed(value: str):
    if value in ("True", "False"):
        return value == "True"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def layer_tables(client, runs) -> pd.DataFrame:
    """run_id, metric (NNN_<layer>), layer, module: each run's layer table (runs without one are left out)."""
    tables = []
    for run in runs:
        try:
            path = client.download_artifacts(run.info.run_id, contract.LAYER_TABLE)
        except (MlflowException, OSError):
            continue  # a run that failed before training logged none
        tables.append(pd.read_csv(path, usecols=["metric", "layer", "module"]).assign(run_id=run.info.run_id))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["run_id", "metric", "layer", "module"])


def histories_frame(client, uri: str, runs) -> pd.DataFrame:
    """Long frame (run_id, key, step, value) of every metric history of the runs, keys as the
    harness names them now."""
    run_ids = [r.info.run_id for r in runs]
    frame = None
    if uri.startswith("sqlite:///"):
        try:
            frame = _sqlite_histories(Path(uri[len("sqlite:///"):]), run_ids)
        except sqlite3.Error:
            frame = None  # an MLflow schema this reader does not know: use the API
    if frame is None:
        frame = _api_histories(client, runs)
    frame["key"] = frame["key"].map(contract.current_name)  # a store written before a rename
    frame = frame.drop_duplicates(["run_id", "key", "step"], keep="last")  # one point per step
    return frame.sort_values(["run_id", "key", "step"]).reset_index(drop=True)


def _sqlite_histories(db: Path, run_ids) -> pd.DataFrame:
    parts = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start:start + 500]
            query = ("SELECT run_uuid AS run_id, key, step, CASE WHEN is_nan THEN NULL ELSE value END AS value "
                     f"FROM metrics WHERE run_uuid IN ({','.join('?' * len(chunk))})")
            parts.append(pd.read_sql_query(query, connection, params=chunk))
    return pd.concat(parts, ignore_index=True)


def _api_histories(client, runs) -> pd.DataFrame:
    requests = [(r.info.run_id, key) for r in runs for key in r.data.metrics]

    def fetch(request):
        run_id, key = request
        return [(run_id, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        rows = [row for chunk in pool.map(fetch, requests) for row in chunk]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
