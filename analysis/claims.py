"""Statements about a study computed from its runs, never asserted: each says what was measured,
on which runs, and what the numbers say by a rule stated with it."""

import math

import pandas as pd

EXPLODING, VANISHING = 10.0, 0.1  # first-to-last hidden layer gradient-norm ratios


def flow(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "undefined"
    if ratio > EXPLODING:
        return "exploding"
    if ratio < VANISHING:
        return "vanishing"
    return "neither"


def gradient_flow(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run: the ratio of the first layer's gradient norm to the last hidden layer's (the
    first and last conv, from the layer table) at initialisation (step 0) and at the last logged
    step, and what each ratio says. `layers`: analysis.frames.grad_by_layer's frame."""
    convs = layers[layers["module"] == "Conv2d"]
    rows = []
    for run_id, run in convs.groupby("run_id", sort=False):
        first, last = run["layer_index"].min(), run["layer_index"].max()
        norms = run.pivot_table(index="step", columns="layer_index", values="value")
        end = norms.index.max()
        ratios = {when: norms.loc[step, first] / norms.loc[step, last] for when, step in (("start", 0), ("end", end))}
        rows.append({"run_id": run_id, "net": run["net"].iloc[0], "normalisation": run["normalisation"].iloc[0],
                     "depth": run["depth"].iloc[0], "end_step": int(end),
                     "first_layer": run.loc[run["layer_index"] == first, "layer"].iloc[0],
                     "last_layer": run.loc[run["layer_index"] == last, "layer"].iloc[0],
                     "ratio_start": ratios["start"], "flow_start": flow(ratios["start"]),
                     "ratio_end": ratios["end"], "flow_end": flow(ratios["end"])})
    return pd.DataFrame(rows)


def gradient_flow_markdown(table: pd.DataFrame) -> list:
    """The report's section: the rule, one sentence per run, in run order."""
    lines = ["## Gradient flow", "",
             f"Ratio of the first conv layer's gradient norm to the last conv layer's, per run, at "
             f"initialisation (step 0) and at the last logged step: above {EXPLODING:g} the gradient "
             f"grows toward the input (exploding), below {VANISHING:g} it shrinks (vanishing), "
             "otherwise neither.", ""]
    for row in table.itertuples():
        lines.append(f"- {row.net} ({row.normalisation}): {row.ratio_start:.3g} at step 0 ({row.flow_start}), "
                     f"{row.ratio_end:.3g} at step {row.end_step} ({row.flow_end}); "
                     f"`{row.first_layer}` against `{row.last_layer}`.")
    return lines + [""]
