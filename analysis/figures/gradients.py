"""Figures of the per-layer gradient norms: against layer, over training, and at the first layer against depth."""

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from analysis import frames
from analysis.claims import geometric_mean
from analysis.figures.common import by_variant_and_depth, finish, need, need_model_axis, ratio_sentence, run_title, sig

HEATMAP_RUNS = 4


def conv_layers(layers, classifier=True):
    """Conv (and linear) layers only (BN entries would zigzag the line), numbered input to output."""
    convs = layers[layers["module"].isin(["Conv2d", "Linear"] if classifier else ["Conv2d"])].copy()
    need(not convs.empty, "no layer table says which layers are convolutions (the runs' artifacts are missing)")
    convs["position"] = convs.groupby(["run_id", "step"]).cumcount() + 1
    return convs


def grad_vs_layer(history, runs, layers):
    """Gradient norm against layer, at initialisation and at the end: log scale."""
    need_model_axis(runs)
    layers = frames.grad_by_layer(history, runs, layers)
    need(not layers.empty, "no per-layer gradient norms (probes off?)")
    last = layers.groupby("run_id")["step"].transform("max")
    layers = layers[(layers["step"] == 0) | (layers["step"] == last)].copy()
    layers["when"] = np.where(layers["step"] == 0, "initialisation", "last logged step")
    data, depths = by_variant_and_depth(conv_layers(layers), runs)
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
        include_groups=False).groupby("variant").agg(geometric_mean)
    finding = "At initialisation, depth " + depths[-1] + ": the first conv layer's gradient is " + "; ".join(
        f"{sig(ratio)}x the last conv layer's in {variant}" for variant, ratio in ratios.items()) + "." if len(ratios) else ""
    return finish(grid, "Gradient norm per layer: does the gradient reach the first layers?"), finding


def grad_heatmap(history, runs, layers):
    """Gradient norm per conv layer over training, as heatmaps on one colour scale, for the first runs."""
    layers = frames.grad_by_layer(history, runs, layers)
    need(not layers.empty, "no per-layer gradient norms (probes off?)")
    layers = conv_layers(layers, classifier=False)
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
    finding = (f"Colour scale shared by the panels: gradient norms from {sig(10 ** low)} to {sig(10 ** high)}; "
               "the classifier is left out.")
    return finish(fig, f"Gradient norm per conv layer over training (first {len(tables)} runs)"), finding


def first_layer_gradient(history, runs, layers):
    """The first conv layer's gradient norm at initialisation against depth, one line per labelled arm."""
    need("depth" in frames.swept(runs), "depth was not swept")
    layers = frames.grad_by_layer(history, runs, layers)
    need(not layers.empty, "no per-layer gradient norms (probes off?)")
    convs = conv_layers(layers[layers["step"] == 0], classifier=False)
    first = convs[convs["layer_index"] == convs.groupby("run_id")["layer_index"].transform("min")]
    columns = frames.label_columns(runs) or ["net"]
    data = first.assign(arm=frames.as_text(first[columns]).agg(", ".join, axis=1))
    fig, ax = plt.subplots()
    sns.lineplot(data=data, x="depth", y="value", hue="arm", style="arm", markers=True, dashes=False,
                 errorbar="sd", ax=ax)
    ax.set(yscale="log", xlabel="depth (layers)", ylabel="gradient L2 norm of the first conv layer (log scale)")
    ax.set_xticks(sorted(data["depth"].unique()))
    ax.legend(title="")
    finding = ratio_sentence(data, "arm", "first-layer gradient norm at initialisation")
    return finish(fig, "Gradient at the first layer at initialisation, by depth"), finding
