"""The report's figures, each drawn from a tidy frame (analysis.frames) with seaborn.

A figure whose study axis the selection does not vary raises Skip with the reason; the
report lists it as a note. Every figure is FIGSIZE at DPI, labelled for a reader who did
not run the sweep: units on the axes, a title saying what is compared, human legend names.
"""

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

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


def _finish(grid_or_fig, title):
    fig = getattr(grid_or_fig, "figure", grid_or_fig)
    fig.set_size_inches(*FIGSIZE)
    bottom = 0.0
    if isinstance(grid_or_fig, sns.FacetGrid) and grid_or_fig.legend is not None:
        # the grid's legend sits right of the panels; after resizing it would cover them
        sns.move_legend(grid_or_fig, "lower center", bbox_to_anchor=(0.5, 0.0), ncol=10, frameon=False)
        bottom = 0.1
    fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def training_curves(history, runs, layers):
    """1. Training loss and validation error against step: colour = depth, facets = residual x BN."""
    _need_architecture_axis(runs)
    data = frames.curves(history, runs)
    _need(not data.empty, "no training-loss or validation-accuracy history")
    data, depths = _by_variant_and_depth(data, runs)
    grid = sns.relplot(data=data, x="step", y="value", hue="depth", hue_order=depths, col="variant", row="metric", kind="line",
                       units="run_id", estimator=None, facet_kws={"sharey": "row"}, palette="viridis",
                       marker="o", markersize=3)
    grid.set_axis_labels("training step", "")
    grid.set_titles("{row_name} | {col_name}")
    for (metric, _), ax in grid.axes_dict.items():
        ax.set_ylabel("cross-entropy loss" if metric == "training loss" else "validation error (fraction)")
    grid.legend.set_title("depth (layers)")
    return _finish(grid, "Training loss and validation error by depth (He et al. 2016, Fig. 6)")


def _need_architecture_axis(runs):
    _need({"depth", "residual", "batchnorm"} & set(frames.swept(runs)), "depth, residual and batchnorm were not swept")


def _by_variant_and_depth(data, runs):
    """The frame with a panel label (`variant`) and depth as category labels, and the depths
    in numeric order (not "14" before "8")."""
    data = data.assign(variant=_variant_column(runs)(data))
    depths = [str(d) for d in sorted(data["depth"].unique())]
    return data.assign(depth=data["depth"].astype(str)), depths


def _conv_layers(layers):
    """Conv and linear layers only (BN entries would zigzag the line), numbered input to output."""
    convs = layers[layers["module"].isin(["Conv2d", "Linear"])].copy()
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
    grid.set_axis_labels("layer (conv/linear, input = 1 → output)", "gradient L2 norm (log scale)")
    grid.set_titles("{col_name}")
    return _finish(grid, "Gradient norm per layer: does the gradient reach the first layers?")


def grad_heatmap(history, runs, layers):
    """3. Gradient norm per conv/linear layer over training, as a heatmap, for the first runs."""
    layers = frames.grad_by_layer(history, runs, layers)
    _need(not layers.empty, "no per-layer gradient norms (probes off?)")
    layers = _conv_layers(layers)
    layers["label"] = _variant_column(runs)(layers).str.replace("-", " ") + ", depth " + layers["depth"].astype(str)
    chosen = list(dict.fromkeys(frames.labelled_runs(runs)["run_id"]))[:HEATMAP_RUNS]
    fig, axs = plt.subplots(1, len(chosen), squeeze=False)
    for ax, run_id in zip(axs[0], chosen):
        one = layers[layers["run_id"] == run_id]
        table = np.log10(one.pivot_table(index="position", columns="step", values="value").clip(lower=1e-12))
        sns.heatmap(table, ax=ax, cmap="magma", cbar_kws={"label": "log10 gradient norm"})
        ax.set_title(one["label"].iloc[0], fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("conv/linear layer (input = 1, at the top)")
    return _finish(fig, f"Gradient norm per layer over training (first {len(chosen)} runs)")


def error_vs_depth(history, runs, layers):
    """4. Final test error against depth, plain against residual."""
    _need("depth" in frames.swept(runs), "depth was not swept")
    data = frames.final_errors(runs).dropna(subset=["test error"])
    _need(not data.empty, "no run has a test accuracy")
    fig, ax = plt.subplots()
    sns.lineplot(data=data, x="depth", y="test error", hue="architecture", style="normalisation", markers=True,
                 errorbar="sd", ax=ax)
    ax.set_xticks(sorted(data["depth"].unique()))
    ax.set(xlabel="depth (layers)", ylabel="test error (fraction)")
    ax.legend(title="")
    return _finish(fig, "Final test error by depth: plain vs residual (He et al. 2016, Table 6)")


def optimizers(history, runs, layers):
    """5. Training loss by optimiser, mean and spread across seeds."""
    _need("optimizer" in frames.swept(runs), "the optimizer was not swept")
    data = frames.curves(history, runs)
    data = data[data["metric"] == "training loss"]
    fig, ax = plt.subplots()
    sns.lineplot(data=data, x="step", y="value", hue="optimizer", errorbar="sd", ax=ax)
    ax.set(yscale="log", xlabel="training step", ylabel="training cross-entropy loss (log scale)")
    ax.legend(title="optimizer (band: ±1 sd across seeds)" if "seed" in frames.swept(runs) else "optimizer")
    return _finish(fig, "Training loss by optimiser, each at its own default learning rate")


def shift_invariance(history, runs, layers):
    """6. Shift-invariance scores by augmentation, and accuracy against shift."""
    _need("augment" in frames.swept(runs), "augmentation was not swept")
    scores = frames.shift_scores(runs)
    curve = frames.shift_curves(history, runs)
    _need(not scores.empty and not curve.empty, "no shift-invariance metrics (probes.shift off?)")
    fig, (left, right) = plt.subplots(1, 2)
    sns.barplot(data=scores, x="augment", y="value", hue="score", errorbar="sd", ax=left)
    left.set(xlabel="training augmentation", ylabel="probability", ylim=(0, 1))
    left.legend(title="")
    sns.lineplot(data=curve, x="dx", y="value", hue="augment", errorbar="sd", marker="o", ax=right)
    right.set(xlabel="horizontal shift dx (pixels)", ylabel="test accuracy")
    right.legend(title="training augmentation")
    return _finish(fig, "Shift invariance by training augmentation (test set)")


def landscape(history, runs, layers):
    """7. Loss-landscape smoothness over training, BatchNorm on vs off."""
    _need("batchnorm" in frames.swept(runs), "batchnorm was not swept")
    data = frames.landscape(history, runs)
    _need(not data.empty, "no landscape metrics (probes.landscape.every=0)")
    grid = sns.relplot(data=data, x="step", y="value", hue="normalisation", style="architecture", col="metric",
                       kind="line", facet_kws={"sharey": False}, marker="o", markersize=3)
    grid.set(yscale="log")
    grid.set_axis_labels("training step", "")
    for metric, ax in grid.axes_dict.items():
        ax.set_ylabel("range of loss along -gradient" if metric == "loss variation" else "max ||g - g'|| along -gradient")
    grid.set_titles("{col_name}")
    return _finish(grid, "Loss-landscape smoothness, BatchNorm on vs off (Santurkar et al. 2018)")


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
    return _finish(fig, "Gradient at the first layer at initialisation, by depth")


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
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), title="padding", frameon=False)
    return _finish(fig, "Shift consistency by downsampling and padding (Zhang 2019)")


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
        right.set(xlabel="rotation (degrees)", ylabel="test accuracy")
    return _finish(fig, "Invariance beyond shifts by training augmentation")


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
    return _finish(grid, "Generalisation gap by dropout and weight decay")


def _label_bars(ax):
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)


FIGURES = [
    ("training_curves", training_curves, "Training loss and validation error against step; colour is depth, panels are residual/plain (and BatchNorm on/off)."),
    ("grad_vs_layer", grad_vs_layer, "Gradient L2 norm of each conv/linear layer from input to output, at initialisation (solid) and at the last logged step."),
    ("grad_heatmap", grad_heatmap, "Gradient norm of each conv/linear layer (rows, input at the top) over training steps (columns), log colour scale."),
    ("error_vs_depth", error_vs_depth, "Final test error against depth for plain and residual nets (bars: ±1 sd over seeds where repeated)."),
    ("optimizers", optimizers, "Training loss by optimiser (band: ±1 sd across seeds where repeated)."),
    ("shift_invariance", shift_invariance, "Left: shift consistency and one-pixel instability by training augmentation. Right: test accuracy against horizontal shift."),
    ("landscape", landscape, "Loss variation and gradient predictiveness along the gradient direction over training, BatchNorm on vs off."),
    ("first_layer_gradient", first_layer_gradient, "Gradient L2 norm of the first conv layer at initialisation (step 0) against depth, one line per residual/BatchNorm arm."),
    ("downsampling", downsampling, "Test-set shift consistency by downsampling (strided convolution, max, average and blur pooling), zero against circular padding; bars: ±1 sd across seeds where repeated."),
    ("invariance", invariance, "Left: test-set consistency under shifts, rotations, scalings and illumination changes by training augmentation. Right: test accuracy against rotation angle."),
    ("regularisation", regularisation, "Training accuracy (last 10% of steps, augmented batches) minus test accuracy, by dropout and weight decay."),
]
