"""Tidy frames behind the figures: one row per observation, with the run's study axes and
human-readable labels as columns, so a figure is a plain seaborn call over a frame."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd

from harness import contract
from harness.contract import AXES


def as_text(values):
    """A Series or DataFrame as strings for labels and tables, a missing value as "-" (pandas 3's
    astype(str) keeps NaN, which a join then fails on: a param that only some runs log)."""
    return values.astype(object).where(values.notna(), "-").astype(str)


def axis_column(axis: str) -> str:
    """The runs-frame column an axis is read from (analysis.load.runs_frame)."""
    source, key = AXES[axis]
    return f"param.{key}" if source == "param" else f"tag.{contract.choice_tag(key)}"


PARAM_AXES = {key for source, key in AXES.values() if source == "param"}


def finished(runs: pd.DataFrame) -> pd.Series:
    """Which runs trained to their end (a diverged run did too). The one rule the report follows:
    figures, captions and curves draw only these, the claims those that did not diverge; a run
    stopped, failed or still running ends at an arbitrary step and would skew either."""
    return runs["status"] == "FINISHED"


def labelled_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs frame with short axis columns and display labels. An optimiser or augmentation
    is named by the config file that chose it (optim=momentum, augment=crop_flip); where runs
    of one choice were trained with different values of its group's keys (augment.flip=false
    on the command line), those values join the label, so one label is one setting. The label
    columns and `net` are the words each run's model family gave (model_labels)."""
    frame = runs.copy()
    for axis in AXES:
        frame[axis] = frame.get(axis_column(axis))
        source, group = AXES[axis]
        if source == "choice" and frame[axis].notna().any():
            frame[axis] = _with_differing_settings(frame, frame[axis], group)
    labels = [model_labels(tag) for tag in frame.get(LABELS_COLUMN, pd.Series(None, index=frame.index))]
    for column in label_columns(frame):
        frame[column] = [_word(run_labels, column, run) for run_labels, (_, run) in zip(labels, frame.iterrows())]
    names = [frame.at[index, next(iter(run_labels["columns"]))] if run_labels["columns"] else run_labels["family"]
             for index, run_labels in zip(frame.index, labels)]  # a net is named by its first label (plain-56)
    frame["net"] = pd.Series(names, index=frame.index).astype(str) + "-" + frame["depth"].astype(str)
    return frame


LABELS_COLUMN = f"tag.{contract.MODEL_LABELS}"


def model_labels(tag) -> dict:
    """A run's model_labels tag, read; a run without one was written before it existed, by a ResNet."""
    return json.loads(tag) if isinstance(tag, str) else contract.RESNET_LABELS


def label_axes(runs: pd.DataFrame) -> dict:
    """{label column: the axis it names}, over every model family among the runs, in the order they declare."""
    tags = runs.get(LABELS_COLUMN, pd.Series([None]))
    found = {}
    for tag in dict.fromkeys(tags.where(tags.notna(), None)):
        found.update({column: spec["axis"] for column, spec in model_labels(tag)["columns"].items()})
    return found


def label_columns(runs: pd.DataFrame) -> list:
    return list(label_axes(runs))


def _word(labels: dict, column: str, run: pd.Series):
    """The run's word for its value of the column's axis (its family may not have that column: NaN)."""
    spec = labels["columns"].get(column)
    if spec is None:
        return np.nan
    value = run[spec["axis"]]
    if pd.isna(value):
        return np.nan
    return spec["values"].get(str(value).lower(), str(value))


def label_word(row: pd.Series, axis: str):
    """The word a run's labels give its value of `axis`, or None where no label column names it."""
    column = next((c for c, spec in model_labels(row.get(LABELS_COLUMN))["columns"].items() if spec["axis"] == axis), None)
    return None if column is None else row[column]


def column_of_axis(runs: pd.DataFrame, axis: str):
    """The label column that names `axis` (batchnorm: normalisation, for a ResNet), or None."""
    return next((column for column, named in label_axes(runs).items() if named == axis), None)


def _with_differing_settings(frame: pd.DataFrame, choices: pd.Series, group: str) -> pd.Series:
    """Each run's choice, followed by `key=value` for each key of the group (not an axis of its
    own) whose value differs among the runs of that choice."""
    keys = [c for c in frame if c.startswith(f"param.{group}.") and c[len("param."):] not in PARAM_AXES]
    labels = choices.copy()
    for choice, runs in frame.groupby(choices, dropna=True):
        differing = [k for k in keys if as_text(runs[k]).nunique() > 1]
        for index, run in runs.iterrows():
            labels[index] = " ".join([choice, *(f"{k[len('param.'):]}={run[k]}" for k in differing)])
    return labels


def swept(runs: pd.DataFrame) -> list:
    """The study axes (short names) that take more than one value across the runs."""
    frame = labelled_runs(runs)
    return [axis for axis in AXES if frame[axis].nunique(dropna=True) > 1]


def with_axes(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    labelled = labelled_runs(runs)
    columns = ["run_id", "run_name", *AXES, *label_columns(runs), "net", "diverged"]
    if LABELS_COLUMN in labelled:
        columns.append(LABELS_COLUMN)  # so that a frame made from this one knows its runs' labels
    return history.merge(labelled[columns], on="run_id")


def curves(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Training loss and validation error against step: columns run_id, step, metric, value."""
    wanted = history[history["key"].isin([contract.TRAIN_LOSS, contract.VAL_ACC])].copy()
    is_acc = wanted["key"] == contract.VAL_ACC
    wanted.loc[is_acc, "value"] = 1 - wanted.loc[is_acc, "value"]
    wanted["metric"] = wanted["key"].map({contract.TRAIN_LOSS: "training loss", contract.VAL_ACC: "validation error"})
    return with_axes(wanted, runs)


def grad_by_layer(history: pd.DataFrame, runs: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """One row per layer per logged step per run: layer_index, layer, module, step, value; in
    layer order. `layers`: the runs' layer tables (analysis.load.layer_tables)."""
    rows = history[history["key"].str.match(rf"^{re.escape(contract.GRAD_NORM)}\d{{3}}_")].copy()
    rows["metric"] = rows["key"].str.slice(len(contract.GRAD_NORM))
    rows["layer_index"] = rows["metric"].str.slice(0, 3).astype(int)
    rows["layer"] = rows["metric"].str.slice(4)
    rows = rows.merge(layers[["run_id", "metric", "module"]], on=["run_id", "metric"], how="left")
    rows = with_axes(rows.drop(columns=["key", "metric"]), runs)
    return rows.sort_values(["run_id", "step", "layer_index"]).reset_index(drop=True)


def final_errors(runs: pd.DataFrame) -> pd.DataFrame:
    """Final test error per run (diverged runs have none)."""
    frame = labelled_runs(runs)
    frame["test error"] = 1 - frame.get(f"metric.{contract.TEST_ACC}", np.nan)
    return frame


def shift_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame: run, augmentation, score name, value (test-set shift scores)."""
    frame = labelled_runs(runs)
    names = {f"metric.test/{contract.SHIFT_CONSISTENCY}": "consistency",
             f"metric.test/{contract.SHIFT_INSTABILITY}": "1-px instability"}
    present = [c for c in names if c in frame]
    long = frame.melt(id_vars=["run_id", "augment", "net", "seed"], value_vars=present,
                      var_name="score", value_name="value")
    long["score"] = long["score"].map(names)
    return long


def shift_curves(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy against horizontal shift dx (metric step = dx + max)."""
    points = history[history["key"] == contract.SHIFT_ACC_DX].copy()
    frame = with_axes(points, runs)
    max_shift = labelled_runs(runs).set_index("run_id")["param.probes.shift.max"]
    frame["dx"] = frame["step"] - frame["run_id"].map(max_shift)
    return frame


FAMILIES = ("shift", *contract.INVARIANCE_FAMILIES)


def invariance_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame: one row per run and transform family with a test-set consistency."""
    frame = labelled_runs(runs)
    columns = {f"metric.test/{contract.SHIFT_CONSISTENCY}": "shift",
               **{f"metric.test/{f}_{contract.CONSISTENCY}": f for f in FAMILIES[1:]}}
    present = [c for c in columns if c in frame]
    long = frame.melt(id_vars=["run_id", *AXES, "net"], value_vars=present, var_name="family",
                      value_name="consistency").dropna(subset=["consistency"])
    long["family"] = long["family"].map(columns)
    return long


def family_curve(history: pd.DataFrame, runs: pd.DataFrame, family: str, parameter: str) -> pd.DataFrame:
    """Test accuracy at each point of a family's grid (rotation: degrees; scale: factor), with
    the point's parameter value in column `parameter`."""
    points = with_axes(history[history["key"] == contract.family_acc(family)].copy(), runs)
    extents = runs.set_index("run_id").get(f"param.probes.invariance.{family}", pd.Series(dtype=float))
    grids = {run_id: contract.invariance_grid(family, SimpleNamespace(**{family: extent})) for run_id, extent in extents.items()}
    points[parameter] = [grids[r][int(s)][0] for r, s in zip(points["run_id"], points["step"])]
    return points


def landscape(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    names = {contract.LANDSCAPE_LOSS_VARIATION: "loss variation",
             contract.LANDSCAPE_GRAD_PREDICTIVENESS: "gradient predictiveness"}
    points = history[history["key"].isin(names)].copy()
    points["metric"] = points["key"].map(names)
    return with_axes(points, runs)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """The report's table: one row per run, final losses, accuracies and shift scores."""
    frame = labelled_runs(runs)
    columns = {"run_name": "run", "status": "status", "diverged": "diverged",
               f"metric.{contract.TRAIN_LOSS}": "train loss", f"metric.{contract.TRAIN_ACC}": "train acc",
               f"metric.{contract.VAL_LOSS}": "val loss", f"metric.{contract.VAL_ACC}": "val acc",
               f"metric.{contract.TEST_LOSS}": "test loss", f"metric.{contract.TEST_ACC}": "test acc",
               f"metric.test/{contract.SHIFT_CONSISTENCY}": "shift consistency",
               f"metric.test/{contract.SHIFT_CONSISTENCY_SE}": "shift consistency SE",
               f"metric.test/{contract.SHIFT_INSTABILITY}": "1-px instability"}
    table = pd.DataFrame({label: frame[c] if c in frame else np.nan for c, label in columns.items()})
    return table.assign(run_id=frame["run_id"])
