"""Tidy frames behind the figures: one row per observation, with the run's study axes and
human-readable labels as columns, so a figure is a plain seaborn call over a frame."""

import numpy as np
import pandas as pd

OPTIMIZER_NAMES = {"sgd": "SGD", "momentum": "SGD + momentum", "nesterov": "SGD + Nesterov",
                   "rmsprop": "RMSProp", "adam": "Adam", "adamw": "AdamW"}
AUGMENT_NAMES = {"none": "none", "flip": "flip", "crop": "crop", "crop_flip": "crop + flip"}
AXES = {"model.depth": "depth", "model.residual": "residual", "model.batchnorm": "batchnorm",
        "optim.name": "optimizer", "augment.name": "augment", "trainer.seed": "seed"}


def labelled_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs frame with short axis columns and display labels."""
    frame = runs.copy()
    for param, column in AXES.items():
        frame[column] = frame.get(f"param.{param}")
    frame["architecture"] = np.where(frame["residual"] == True, "residual", "plain")  # noqa: E712
    frame["normalisation"] = np.where(frame["batchnorm"] == True, "BatchNorm", "no BatchNorm")  # noqa: E712
    frame["net"] = frame["architecture"] + "-" + frame["depth"].astype(str)
    frame["optimizer_name"] = frame["optimizer"].map(OPTIMIZER_NAMES).fillna(frame["optimizer"])
    frame["augmentation"] = frame["augment"].map(AUGMENT_NAMES).fillna(frame["augment"])
    return frame


def swept(runs: pd.DataFrame) -> list:
    """The study axes (short names) that take more than one value across the runs."""
    frame = labelled_runs(runs)
    return [column for column in AXES.values() if frame[column].nunique(dropna=True) > 1]


def with_axes(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    columns = ["run_id", "run_name", *AXES.values(), "architecture", "normalisation", "net",
               "optimizer_name", "augmentation", "diverged"]
    return history.merge(labelled_runs(runs)[columns], on="run_id")


def curves(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Training loss and validation error against step: columns run_id, step, metric, value."""
    wanted = history[history["key"].isin(["train/loss", "val/acc"])].copy()
    is_acc = wanted["key"] == "val/acc"
    wanted.loc[is_acc, "value"] = 1 - wanted.loc[is_acc, "value"]
    wanted["metric"] = wanted["key"].map({"train/loss": "training loss", "val/acc": "validation error"})
    return with_axes(wanted, runs)


def grad_by_layer(history: pd.DataFrame, runs: pd.DataFrame, kind: str = "grad_norm") -> pd.DataFrame:
    """One row per layer per logged step per run: layer_index, layer, step, value; in layer order."""
    layers = history[history["key"].str.match(rf"^{kind}/\d{{3}}_")].copy()
    suffix = layers["key"].str.slice(len(kind) + 1)
    layers["layer_index"] = suffix.str.slice(0, 3).astype(int)
    layers["layer"] = suffix.str.slice(4)
    layers = with_axes(layers.drop(columns="key"), runs)
    return layers.sort_values(["run_id", "step", "layer_index"]).reset_index(drop=True)


def final_errors(runs: pd.DataFrame) -> pd.DataFrame:
    """Final test error per run (diverged runs have none)."""
    frame = labelled_runs(runs)
    frame["test error"] = 1 - frame.get("metric.test/acc", np.nan)
    return frame


def shift_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame: run, augmentation, score name, value (test-set shift scores)."""
    frame = labelled_runs(runs)
    names = {"metric.test/shift_consistency": "consistency", "metric.test/shift_instability_1px": "1-px instability"}
    present = [c for c in names if c in frame]
    long = frame.melt(id_vars=["run_id", "augmentation", "net", "seed"], value_vars=present,
                      var_name="score", value_name="value")
    long["score"] = long["score"].map(names)
    return long


def shift_curves(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy against horizontal shift dx (metric step = dx + max)."""
    points = history[history["key"] == "shift/acc_dx"].copy()
    frame = with_axes(points, runs)
    max_shift = labelled_runs(runs).set_index("run_id")["param.probes.shift.max"]
    frame["dx"] = frame["step"] - frame["run_id"].map(max_shift)
    return frame


def landscape(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    names = {"landscape/loss_variation": "loss variation", "landscape/grad_predictiveness": "gradient predictiveness"}
    points = history[history["key"].isin(names)].copy()
    points["metric"] = points["key"].map(names)
    return with_axes(points, runs)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """The report's table: one row per run, final losses, accuracies and shift scores."""
    frame = labelled_runs(runs)
    columns = {"run_name": "run", "status": "status", "diverged": "diverged",
               "metric.train/loss": "train loss", "metric.train/acc": "train acc",
               "metric.val/loss": "val loss", "metric.val/acc": "val acc",
               "metric.test/loss": "test loss", "metric.test/acc": "test acc",
               "metric.test/shift_consistency": "shift consistency",
               "metric.test/shift_instability_1px": "1-px instability"}
    table = pd.DataFrame({label: frame[c] if c in frame else np.nan for c, label in columns.items()})
    return table.assign(run_id=frame["run_id"])
