"""Figures of how training went: loss and error against step and depth, by optimiser, the loss
landscape's smoothness, and the generalisation gap."""

import matplotlib.pyplot as plt
import seaborn as sns

from analysis import frames
from analysis.claims import QUANTITIES, convergence
from analysis.figures.common import (by_variant_and_depth, finish, from_zero, label_bars, need, need_model_axis,
                                     ratio_sentence, sig, variant_column)


def training_curves(history, runs, layers):
    """Training loss and validation error against step: colour = depth, facets = the model's labelled axes."""
    need_model_axis(runs)
    data = frames.curves(history, runs)
    need(not data.empty, "no training-loss or validation-accuracy history")
    data, depths = by_variant_and_depth(data, runs)
    grid = sns.relplot(data=data, x="step", y="value", hue="depth", hue_order=depths, col="variant", row="metric", kind="line",
                       units="run_id", estimator=None, facet_kws={"sharey": "row"}, palette="viridis",
                       marker="o", markersize=4)
    grid.set_axis_labels("training step", "")
    grid.set_titles("{row_name} | {col_name}")
    for (metric, _), ax in grid.axes_dict.items():
        ax.set_xlim(left=0)
        if metric == "training loss":
            ax.set_ylabel("cross-entropy loss")
            from_zero(ax)
        else:
            ax.set_ylabel("validation error (fraction)")
            from_zero(ax, 1)
    grid.legend.set_title("depth (layers)")
    window = convergence(history).set_index("run_id")["final_train_loss"]  # the claims table's quantity
    finals = (data[data["metric"] == "training loss"].drop_duplicates("run_id")
              .assign(depth=lambda f: f["depth"].astype(int), value=lambda f: f["run_id"].map(window)))
    finding = ratio_sentence(finals, "variant", QUANTITIES["final training loss"])
    return finish(grid, "Training loss and validation error by depth (He et al. 2016, Fig. 6)"), finding


def error_vs_depth(history, runs, layers):
    """Final test error against depth, one line per arm, the y-axis from 0."""
    need("depth" in frames.swept(runs), "depth was not swept")
    data = frames.final_errors(runs).dropna(subset=["test error"])
    need(not data.empty, "no run has a test accuracy")
    data = data.assign(arm=variant_column(runs)(data))  # one label per arm: no legend headings
    fig, ax = plt.subplots()
    arms = data["arm"].nunique()
    sns.pointplot(data=data, x="depth", y="test error", hue="arm", dodge=0.1 if arms > 1 else False,
                  markers=["o", "s", "^", "D"][:arms], errorbar="sd", capsize=0.1, ax=ax,
                  order=sorted(data["depth"].unique()))
    ax.set(xlabel="depth (layers)", ylabel="test error (fraction)")
    from_zero(ax, 1)
    ax.legend(title="")
    axes = frames.swept(runs)
    compared = " vs ".join(" vs ".join(sorted(data[column].dropna().unique()))
                           for column, axis in frames.label_axes(runs).items() if axis in axes)
    finals = data.rename(columns={"test error": "value"})
    finding = ratio_sentence(finals, "arm", "test error")
    return finish(fig, "Final test error by depth" + (f": {compared}" if compared else "") + " (He et al. 2016)"), finding


def optimizers(history, runs, layers):
    """Training loss by optimiser, mean and spread across seeds."""
    need("optimizer" in frames.swept(runs), "the optimizer was not swept")
    data = frames.curves(history, runs)
    data = data[data["metric"] == "training loss"]
    fig, ax = plt.subplots()
    sns.lineplot(data=data, x="step", y="value", hue="optimizer", errorbar="sd", ax=ax)
    ax.set(yscale="log", xlabel="training step", ylabel="training cross-entropy loss (log scale)")
    ax.set_xlim(left=0)
    ax.legend(title="optimizer (band: ±1 sd across seeds)" if "seed" in frames.swept(runs) else "optimizer")
    window = convergence(history).set_index("run_id")["final_train_loss"]  # the claims table's quantity
    ends = (data.drop_duplicates("run_id").assign(value=lambda f: f["run_id"].map(window))
            .groupby("optimizer")["value"].mean().sort_values())
    finding = (f"Lowest {QUANTITIES['final training loss']}: {ends.index[0]} ({sig(ends.iloc[0])}); highest: "
               f"{ends.index[-1]} ({sig(ends.iloc[-1])}).") if len(ends) > 1 else ""
    return finish(fig, "Training loss by optimiser, each at its own default learning rate"), finding


def landscape(history, runs, layers):
    """Loss-landscape smoothness over training, BatchNorm on vs off (colour: the labels' words for it)."""
    need("batchnorm" in frames.swept(runs), "batchnorm was not swept")
    data = frames.landscape(history, runs)
    need(not data.empty, "no landscape metrics (probes.landscape.every=0)")
    hue = frames.column_of_axis(runs, "batchnorm") or "batchnorm"
    style = next((c for c in frames.label_columns(runs) if c != hue), None)
    grid = sns.relplot(data=data, x="step", y="value", hue=hue, style=style, col="metric",
                       kind="line", facet_kws={"sharey": False}, marker="o", markersize=4)
    grid.set(yscale="log")
    for ax in grid.axes.flat:
        ax.set_xlim(left=0)
    grid.set_axis_labels("training step", "")
    for metric, ax in grid.axes_dict.items():
        ax.set_ylabel("range of loss along -gradient" if metric == "loss variation" else "max ||g - g'|| along -gradient")
    grid.set_titles("{col_name}")
    variation = data[data["metric"] == "loss variation"].groupby("batchnorm")["value"].mean()
    finding = (f"Mean loss variation without BatchNorm is {sig(variation[False] / variation[True])}x "
               "that with it.") if {False, True} <= set(variation.index) else ""
    return finish(grid, "Loss-landscape smoothness, BatchNorm on vs off (Santurkar et al. 2018)"), finding


def regularisation(history, runs, layers):
    """Generalisation gap by dropout and weight decay (columns: augmentation, where swept)."""
    from analysis.claims import measures

    axes = set(frames.swept(runs))
    need({"dropout", "weight_decay"} & axes, "dropout and weight decay were not swept")
    data = measures(history, runs, layers).dropna(subset=["generalisation gap"])
    need(not data.empty, "no run has both a training and a test accuracy")
    grid = sns.catplot(data=data, x="dropout", y="generalisation gap", hue="weight_decay", kind="bar",
                       col="augment" if "augment" in axes else None, errorbar="sd")
    for ax in grid.axes.flat:
        label_bars(ax)
    grid.set_axis_labels("dropout probability before the classifier", "training - test accuracy")
    grid.legend.set_title("weight decay")
    gaps = data.groupby("dropout")["generalisation gap"].mean()
    finding = (f"Mean gap {sig(gaps.iloc[0])} at dropout {gaps.index[0]:g}, {sig(gaps.iloc[-1])} at "
               f"{gaps.index[-1]:g}.") if len(gaps) > 1 else ""
    return finish(grid, "Generalisation gap by dropout and weight decay"), finding
