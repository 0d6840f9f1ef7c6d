"""The report's figures, each drawn from a tidy frame (analysis.frames) with seaborn.

A figure whose study axis the selection does not vary raises Skip with the reason; the
report lists it as a note. Every figure is FIGSIZE at DPI, labelled for a reader who did
not run the sweep: units on the axes, a title saying what is compared, human legend names.
"""

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis import frames  # noqa: E402

FIGSIZE = (10, 6)  # inches
DPI = 100  # so each PNG is 1000 x 600 pixels
HEATMAP_RUNS = 4


class Skip(Exception):
    """The selection lacks what this figure compares; the message says what."""


def _need(condition, reason):
    if not condition:
        raise Skip(reason)


def _variant_column(runs):
    axes = frames.swept(runs)
    if "residual" in axes and "batchnorm" in axes:
        return lambda f: f["architecture"] + ", " + f["normalisation"]
    if "batchnorm" in axes:
        return lambda f: f["normalisation"]
    return lambda f: f["architecture"]


def _finish(grid_or_fig, title, placed=()):
    """Size, title, and every legend outside the data: a grid's below its panels, an axes' to
    its right (except on the axes in `placed`, whose legends the figure put outside itself)."""
    fig = getattr(grid_or_fig, "figure", grid_or_fig)
    fig.set_size_inches(*FIGSIZE)
    bottom, right = 0.0, 1.0
    if isinstance(grid_or_fig, sns.FacetGrid) and grid_or_fig.legend is not None:
        sns.move_legend(grid_or_fig, "lower center", bbox_to_anchor=(0.5, 0.0), ncol=10, frameon=False)
        bottom = 0.1
    else:
        for ax in fig.axes:
            if ax.get_legend() is not None and ax not in placed:
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
                right = 0.8
    fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, right, 1))
    return fig


def _from_zero(ax, top=None):
    """A y-axis from 0, so that a small difference does not look large."""
    ax.set_ylim(0, top if top is not None else ax.get_ylim()[1])


def _final(data: pd.DataFrame) -> pd.DataFrame:
    """Each run's last point."""
    return data.sort_values("step").groupby("run_id").tail(1)


def _ratio_sentence(finals: pd.DataFrame, group: str, what: str) -> str:
    """`plain: depth 56 ends with 2.3x the training loss of depth 20` for each group, from
    each run's final value (mean over seeds)."""
    sentences = []
    for name, rows in finals.groupby(group, sort=True):
        means = rows.groupby("depth")["value"].mean()
        if len(means) > 1 and means.iloc[0] > 0:
            sentences.append(f"{name}: depth {means.index[-1]} ends with {means.iloc[-1] / means.iloc[0]:.3g}x "
                             f"the {what} of depth {means.index[0]}")
    return "; ".join(sentences) + "." if sentences else ""


def training_curves(history, runs, layers):
    """1. Training loss and validation error against step: colour = depth, facets = residual x BN."""
    _need_architecture_axis(runs)
    data = frames.curves(history, runs)
    _need(not data.empty, "no training-loss or validation-accuracy history")
    data, depths = _by_variant_and_depth(data, runs)
    grid = sns.relplot(data=data, x="step", y="value", hue="depth", hue_order=depths, col="variant", row="metric", kind="line",
                       units="run_id", estimator=None, facet_kws={"sharey": "row"}, palette="viridis",
                       marker="o", markersize=4)
    grid.set_axis_labels("training step", "")
    grid.set_titles("{row_name} | {col_name}")
    for (metric, _), ax in grid.axes_dict.items():
        ax.set_xlim(left=0)
        if metric == "training loss":
            ax.set_ylabel("cross-entropy loss")
            _from_zero(ax)
        else:
            ax.set_ylabel("validation error (fraction)")
            _from_zero(ax, 1)
    grid.legend.set_title("depth (layers)")
    finals = _final(data[data["metric"] == "training loss"]).assign(depth=lambda f: f["depth"].astype(int))
    finding = _ratio_sentence(finals, "variant", "training loss")
    return _finish(grid, "Training loss and validation error by depth (He et al. 2016, Fig. 6)"), finding


def _need_architecture_axis(runs):
    _need({"depth", "residual", "batchnorm"} & set(frames.swept(runs)), "depth, residual and batchnorm were not swept")


def _by_variant_and_depth(data, runs):
    """The frame with a panel label (`variant`) and depth as category labels, and the depths
    in numeric order (not "14" before "8")."""
    data = data.assign(variant=_variant_column(runs)(data))
    depths = [str(d) for d in sorted(data["depth"].unique())]
    return data.assign(depth=data["depth"].astype(str)), depths


def _conv_layers(layers, classifier=True):
    """Conv (and linear) layers only (BN entries would zigzag the line), numbered input to output."""
    convs = layers[layers["module"].isin(["Conv2d", "Linear"] if classifier else ["Conv2d"])].copy()
    convs["position"] = convs.groupby(["run_id", "step"]).cumcount() + 1
    return convs


def grad_vs_layer(history, runs, layers):
    """2. Gradient norm against layer, at initialisation and at the end: log scale."""
    _need_architecture_axis(runs)
    layers = frames.grad_by_layer(history, runs, layers)
    _need(not layers.empty, "no per-layer gradient norms (probes off?)")
    last = layers.groupby("run_id")["step"].transform("max")
    layers = layers[(layers["step"] == 0) | (layers["step"] == last)].copy()
    layers["when"] = np.where(layers["step"] == 0, "initialisation", "last logged step")
    data, depths = _by_variant_and_depth(_conv_layers(layers), runs)
    grid = sns.relplot(data=data, x="position", y="value", hue="depth", hue_order=depths, style="when", col="variant", kind="line",
                       units="run_id", estimator=None, palette="viridis")
    grid.set(yscale="log")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid.set_axis_labels("layer (conv/linear, input = 1 → output)", "gradient L2 norm (log scale)")
    grid.set_titles("{col_name}")
    at_start = data[data["when"] == "initialisation"]
    deepest = at_start[(at_start["depth"] == depths[-1]) & (at_start["module"] == "Conv2d")]
    ratios = deepest.groupby(["variant", "run_id"]).apply(  # as in the report's Gradient flow section
        lambda run: run.loc[run["position"].idxmin(), "value"] / run.loc[run["position"].idxmax(), "value"],
        include_groups=False).groupby("variant").median()
    finding = "At initialisation, depth " + depths[-1] + ": the first conv layer's gradient is " + "; ".join(
        f"{ratio:.2g}x the last conv layer's in {variant}" for variant, ratio in ratios.items()) + "." if len(ratios) else ""
    return _finish(grid, "Gradient norm per layer: does the gradient reach the first layers?"), finding


def run_title(row, axes) -> str:
    """A panel title naming the run's value of every axis the selection varies."""
    words = {"depth": lambda v: f"depth {v}", "residual": lambda v: "residual" if v else "plain",
             "batchnorm": lambda v: "BatchNorm" if v else "no BatchNorm", "seed": lambda v: f"seed {v}"}
    return ", ".join(words.get(axis, lambda v, a=axis: f"{a} {v}")(row[axis]) for axis in axes) or "all runs"


def grad_heatmap(history, runs, layers):
    """3. Gradient norm per conv layer over training, as heatmaps on one colour scale, for the first runs."""
    layers = frames.grad_by_layer(history, runs, layers)
    _need(not layers.empty, "no per-layer gradient norms (probes off?)")
    layers = _conv_layers(layers, classifier=False)
    labelled = frames.labelled_runs(runs).set_index("run_id")
    axes = frames.swept(runs)
    chosen = list(dict.fromkeys(labelled.index))[:HEATMAP_RUNS]
    tables = {run_id: np.log10(layers[layers["run_id"] == run_id].pivot_table(
        index="position", columns="step", values="value").clip(lower=1e-12)) for run_id in chosen}
    tables = {run_id: table for run_id, table in tables.items() if not table.empty}
    low = min(t.min().min() for t in tables.values())
    high = max(t.max().max() for t in tables.values())
    fig, axs = plt.subplots(1, len(tables) + 1, squeeze=False, width_ratios=[1] * len(tables) + [0.05])
    for ax, (run_id, table) in zip(axs[0], tables.items()):
        sns.heatmap(table, ax=ax, cmap="magma", vmin=low, vmax=high, cbar=ax is axs[0][len(tables) - 1],
                    cbar_ax=axs[0][-1], cbar_kws={"label": "log10 gradient norm (one scale for all panels)"})
        ax.set_title(run_title(labelled.loc[run_id], axes), fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("conv layer (input = 1, at the top)" if ax is axs[0][0] else "")
    finding = f"Colour scale shared by the panels: 10^{low:.1f} to 10^{high:.1f}; the classifier is left out."
    return _finish(fig, f"Gradient norm per conv layer over training (first {len(tables)} runs)"), finding


def error_vs_depth(history, runs, layers):
    """4. Final test error against depth, one line per arm, the y-axis from 0."""
    _need("depth" in frames.swept(runs), "depth was not swept")
    data = frames.final_errors(runs).dropna(subset=["test error"])
    _need(not data.empty, "no run has a test accuracy")
    data = data.assign(arm=_variant_column(runs)(data))  # one label per arm: no legend headings
    fig, ax = plt.subplots()
    arms = data["arm"].nunique()
    sns.pointplot(data=data, x="depth", y="test error", hue="arm", dodge=0.1 if arms > 1 else False,
                  markers=["o", "s", "^", "D"][:arms], errorbar="sd", capsize=0.1, ax=ax,
                  order=sorted(data["depth"].unique()))
    ax.set(xlabel="depth (layers)", ylabel="test error (fraction)")
    _from_zero(ax, 1)
    ax.legend(title="")
    axes = frames.swept(runs)
    compared = " vs ".join(n for n, a in (("plain vs residual", "residual"), ("BatchNorm on vs off", "batchnorm")) if a in axes)
    finals = data.rename(columns={"test error": "value"})
    finding = _ratio_sentence(finals, "arm", "test error")
    return _finish(fig, "Final test error by depth" + (f": {compared}" if compared else "") + " (He et al. 2016)"), finding


def optimizers(history, runs, layers):
    """5. Training loss by optimiser, mean and spread across seeds."""
    _need("optimizer" in frames.swept(runs), "the optimizer was not swept")
    data = frames.curves(history, runs)
    data = data[data["metric"] == "training loss"]
    fig, ax = plt.subplots()
    sns.lineplot(data=data, x="step", y="value", hue="optimizer", errorbar="sd", ax=ax)
    ax.set(yscale="log", xlabel="training step", ylabel="training cross-entropy loss (log scale)")
    ax.set_xlim(left=0)
    ax.legend(title="optimizer (band: ±1 sd across seeds)" if "seed" in frames.swept(runs) else "optimizer")
    final = _final(data).groupby("optimizer")["value"].mean().sort_values()
    finding = (f"Lowest final training loss: {final.index[0]} ({final.iloc[0]:.3g}); highest: {final.index[-1]} "
               f"({final.iloc[-1]:.3g}).") if len(final) > 1 else ""
    return _finish(fig, "Training loss by optimiser, each at its own default learning rate"), finding


def shift_invariance(history, runs, layers):
    """6. Shift-invariance scores by augmentation, and accuracy against shift."""
    _need("augment" in frames.swept(runs), "augmentation was not swept")
    scores = frames.shift_scores(runs)
    curve = frames.shift_curves(history, runs)
    _need(not scores.empty and not curve.empty, "no shift-invariance metrics (probes.shift off?)")
    fig, (left, right) = plt.subplots(1, 2)
    sns.barplot(data=scores, x="augment", y="value", hue="score", errorbar="sd", ax=left)
    left.set(xlabel="training augmentation", ylabel="probability", ylim=(0, 1.05))
    _label_bars(left)
    sns.move_legend(left, "lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, title="", frameon=False)
    sns.lineplot(data=curve, x="dx", y="value", hue="augment", errorbar="sd", marker="o", ax=right)
    right.set(xlabel="horizontal shift dx (pixels)", ylabel="test accuracy", ylim=(0, 1))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(title="training augmentation")
    consistency = scores[scores["score"] == "consistency"].groupby("augment")["value"].mean().sort_values()
    finding = (f"Shift consistency from {consistency.iloc[0]:.3f} ({consistency.index[0]}) to "
               f"{consistency.iloc[-1]:.3f} ({consistency.index[-1]}).") if len(consistency) > 1 else ""
    return _finish(fig, "Shift invariance by training augmentation (test set)", placed=(left,)), finding


def landscape(history, runs, layers):
    """7. Loss-landscape smoothness over training, BatchNorm on vs off."""
    _need("batchnorm" in frames.swept(runs), "batchnorm was not swept")
    data = frames.landscape(history, runs)
    _need(not data.empty, "no landscape metrics (probes.landscape.every=0)")
    grid = sns.relplot(data=data, x="step", y="value", hue="normalisation", style="architecture", col="metric",
                       kind="line", facet_kws={"sharey": False}, marker="o", markersize=4)
    grid.set(yscale="log")
    for ax in grid.axes.flat:
        ax.set_xlim(left=0)
    grid.set_axis_labels("training step", "")
    for metric, ax in grid.axes_dict.items():
        ax.set_ylabel("range of loss along -gradient" if metric == "loss variation" else "max ||g - g'|| along -gradient")
    grid.set_titles("{col_name}")
    variation = data[data["metric"] == "loss variation"].groupby("normalisation")["value"].mean()
    finding = (f"Mean loss variation without BatchNorm is {variation['no BatchNorm'] / variation['BatchNorm']:.2g}x "
               "that with it.") if {"BatchNorm", "no BatchNorm"} <= set(variation.index) else ""
    return _finish(grid, "Loss-landscape smoothness, BatchNorm on vs off (Santurkar et al. 2018)"), finding


def first_layer_gradient(history, runs, layers):
    """8. The first conv layer's gradient norm at initialisation against depth, one line per arm."""
    _need("depth" in frames.swept(runs), "depth was not swept")
    layers = frames.grad_by_layer(history, runs, layers)
    _need(not layers.empty, "no per-layer gradient norms (probes off?)")
    convs = layers[(layers["module"] == "Conv2d") & (layers["step"] == 0)]
    first = convs[convs["layer_index"] == convs.groupby("run_id")["layer_index"].transform("min")]
    data = first.assign(arm=first["architecture"] + ", " + first["normalisation"])
    fig, ax = plt.subplots()
    sns.lineplot(data=data, x="depth", y="value", hue="arm", style="arm", markers=True, dashes=False,
                 errorbar="sd", ax=ax)
    ax.set(yscale="log", xlabel="depth (layers)", ylabel="gradient L2 norm of the first conv layer (log scale)")
    ax.set_xticks(sorted(data["depth"].unique()))
    ax.legend(title="")
    finding = _ratio_sentence(data, "arm", "first-layer gradient").replace("ends with", "starts with")
    return _finish(fig, "Gradient at the first layer at initialisation, by depth"), finding


DOWNSAMPLING_ORDER = ["stride", "maxpool", "avgpool", "blurpool", "none"]


def downsampling(history, runs, layers):
    """9. Test shift consistency by downsampling, zero against circular padding."""
    _need({"downsample", "padding"} & set(frames.swept(runs)), "downsampling and padding were not swept")
    scores = frames.invariance_scores(runs)
    data = scores[scores["family"] == "shift"]
    _need(not data.empty, "no shift consistency (probes.shift.max=0?)")
    order = [d for d in DOWNSAMPLING_ORDER if d in set(data["downsample"])]
    fig, ax = plt.subplots()
    sns.barplot(data=data, x="downsample", y="consistency", hue="padding", order=order, errorbar="sd", ax=ax)
    _label_bars(ax)
    ax.set(xlabel="downsampling", ylabel="shift consistency (probability, test set)", ylim=(0, 1.05))
    ax.legend(title="padding")
    means = data.groupby(["downsample", "padding"])["consistency"].mean().sort_values()
    finding = (f"Least shift-consistent: {' with '.join(means.index[0])} padding ({means.iloc[0]:.3f}); most: "
               f"{' with '.join(means.index[-1])} padding ({means.iloc[-1]:.3f}).") if len(means) > 1 else ""
    return _finish(fig, "Shift consistency by downsampling and padding (Zhang 2019)"), finding


def invariance(history, runs, layers):
    """10. Consistency under each transform family by training augmentation; accuracy against rotation."""
    _need("augment" in frames.swept(runs), "augmentation was not swept")
    scores = frames.invariance_scores(runs)
    _need(scores["family"].nunique() > 1, "fewer than two invariance probes ran (probes.invariance.families)")
    curve = frames.family_curve(history, runs, "rotation", "angle")
    fig, (left, right) = plt.subplots(1, 2, width_ratios=(3, 2))
    sns.barplot(data=scores, x="family", y="consistency", hue="augment", errorbar="sd", ax=left)
    _label_bars(left)
    left.set(xlabel="transform family", ylabel="consistency (probability, test set)", ylim=(0, 1.05))
    sns.move_legend(left, "lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, title="training augmentation",
                    frameon=False, fontsize=8)
    if curve.empty:
        right.set_axis_off()
    else:
        sns.lineplot(data=curve, x="angle", y="value", hue="augment", errorbar="sd", marker="o", ax=right, legend=False)
        right.set(xlabel="rotation (degrees)", ylabel="test accuracy", ylim=(0, 1))
    untrained = scores[scores["augment"] == "none"].groupby("family")["consistency"].mean().sort_values()
    finding = (f"Without augmentation the least invariant family is {untrained.index[0]} "
               f"(consistency {untrained.iloc[0]:.3f}).") if len(untrained) else ""
    return _finish(fig, "Invariance beyond shifts by training augmentation", placed=(left,)), finding


def regularisation(history, runs, layers):
    """11. Generalisation gap by dropout and weight decay (columns: augmentation, where swept)."""
    from analysis.claims import measures

    axes = set(frames.swept(runs))
    _need({"dropout", "weight_decay"} & axes, "dropout and weight decay were not swept")
    data = measures(history, runs, layers).dropna(subset=["generalisation gap"])
    _need(not data.empty, "no run has both a training and a test accuracy")
    grid = sns.catplot(data=data, x="dropout", y="generalisation gap", hue="weight_decay", kind="bar",
                       col="augment" if "augment" in axes else None, errorbar="sd")
    for ax in grid.axes.flat:
        _label_bars(ax)
    grid.set_axis_labels("dropout probability before the classifier", "training - test accuracy")
    grid.legend.set_title("weight decay")
    gaps = data.groupby("dropout")["generalisation gap"].mean()
    finding = (f"Mean gap {gaps.iloc[0]:.3f} at dropout {gaps.index[0]:g}, {gaps.iloc[-1]:.3f} at "
               f"{gaps.index[-1]:g}.") if len(gaps) > 1 else ""
    return _finish(grid, "Generalisation gap by dropout and weight decay"), finding


def _label_bars(ax):
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)


FIGURES = [
    ("training_curves", training_curves, "Training loss and validation error against step; colour is depth, panels are residual/plain (and BatchNorm on/off)."),
    ("grad_vs_layer", grad_vs_layer, "Gradient L2 norm of each conv/linear layer from input to output, at initialisation (solid) and at the last logged step."),
    ("grad_heatmap", grad_heatmap, "Gradient norm of each conv layer (rows, input at the top) over training steps (columns), one log colour scale for all panels."),
    ("error_vs_depth", error_vs_depth, "Final test error against depth, one line per arm, from 0 (bars: ±1 sd over seeds where repeated)."),
    ("optimizers", optimizers, "Training loss by optimiser (band: ±1 sd across seeds where repeated)."),
    ("shift_invariance", shift_invariance, "Left: shift consistency and one-pixel instability by training augmentation. Right: test accuracy against horizontal shift."),
    ("landscape", landscape, "Loss variation and gradient predictiveness along the gradient direction over training, BatchNorm on vs off."),
    ("first_layer_gradient", first_layer_gradient, "Gradient L2 norm of the first conv layer at initialisation (step 0) against depth, one line per residual/BatchNorm arm."),
    ("downsampling", downsampling, "Test-set shift consistency by downsampling (strided convolution, max, average and blur pooling), zero against circular padding; bars: ±1 sd across seeds where repeated."),
    ("invariance", invariance, "Left: test-set consistency under shifts, rotations, scalings and illumination changes by training augmentation. Right: test accuracy against rotation angle."),
    ("regularisation", regularisation, "Training accuracy (last 10% of steps, augmented batches) minus test accuracy, by dropout and weight decay."),
]
