"""Figures of invariance: to shifts by augmentation and by downsampling and padding, and to
rotations, scalings and illumination changes."""

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from analysis import frames
from analysis.figures.common import above_chance, chance_note, finish, label_bars, need, sig


def shift_invariance(history, runs, layers):
    """Shift-invariance scores by augmentation, and accuracy against shift."""
    need("augment" in frames.swept(runs), "augmentation was not swept")
    scores = frames.shift_scores(above_chance(history, runs))
    curve = frames.shift_curves(history, runs)  # an accuracy at chance is an accuracy: every run
    need(not curve.empty, "no shift-invariance metrics (probes.shift off?)")
    need(not scores.empty, "every run is at chance on the scored sample: no invariance score counts")
    fig, (left, right) = plt.subplots(1, 2)
    sns.barplot(data=scores, x="augment", y="value", hue="score", errorbar="sd", ax=left)
    left.set(xlabel="training augmentation", ylabel="probability", ylim=(0, 1.05))
    label_bars(left)
    sns.move_legend(left, "lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, title="", frameon=False)
    sns.lineplot(data=curve, x="dx", y="value", hue="augment", errorbar="sd", marker="o", ax=right)
    right.set(xlabel="horizontal shift dx (pixels)", ylabel="test accuracy", ylim=(0, 1))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(title="training augmentation")
    consistency = scores[scores["score"] == "consistency"].groupby("augment")["value"].mean().sort_values()
    finding = (f"Shift consistency from {sig(consistency.iloc[0])} ({consistency.index[0]}) to "
               f"{sig(consistency.iloc[-1])} ({consistency.index[-1]}).") if len(consistency) > 1 else ""
    finding += chance_note(history, runs)
    return finish(fig, "Shift invariance by training augmentation (test set)", placed=(left,)), finding


DOWNSAMPLING_ORDER = ["stride", "maxpool", "avgpool", "blurpool", "none"]


def downsampling(history, runs, layers):
    """Test shift consistency by downsampling, zero against circular padding."""
    need({"downsample", "padding"} & set(frames.swept(runs)), "downsampling and padding were not swept")
    scores = frames.invariance_scores(above_chance(history, runs))
    data = scores[scores["family"] == "shift"]
    need(not data.empty, "no shift consistency from a run above chance (probes.shift.max=0?)")
    order = [d for d in DOWNSAMPLING_ORDER if d in set(data["downsample"])]
    fig, ax = plt.subplots()
    sns.barplot(data=data, x="downsample", y="consistency", hue="padding", order=order, errorbar="sd", ax=ax)
    label_bars(ax)
    ax.set(xlabel="downsampling", ylabel="shift consistency (probability, test set)", ylim=(0, 1.05))
    ax.legend(title="padding")
    means = data.groupby(["downsample", "padding"])["consistency"].mean().sort_values()
    finding = (f"Least shift-consistent: {' with '.join(means.index[0])} padding ({sig(means.iloc[0])}); most: "
               f"{' with '.join(means.index[-1])} padding ({sig(means.iloc[-1])}).") if len(means) > 1 else ""
    finding += chance_note(history, runs)
    return finish(fig, "Shift consistency by downsampling and padding (Zhang 2019)"), finding


def invariance(history, runs, layers):
    """Consistency under each transform family by training augmentation; accuracy against rotation."""
    need("augment" in frames.swept(runs), "augmentation was not swept")
    scores = frames.invariance_scores(above_chance(history, runs))
    need(scores["family"].nunique() > 1, "fewer than two invariance probes ran (probes.invariance.families) "
         "on a run above chance")
    curve = frames.family_curve(history, runs, "rotation", "angle")
    fig, (left, right) = plt.subplots(1, 2, width_ratios=(3, 2))
    sns.barplot(data=scores, x="family", y="consistency", hue="augment", errorbar="sd", ax=left)
    label_bars(left)
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
               f"(consistency {sig(untrained.iloc[0])}).") if len(untrained) else ""
    finding += chance_note(history, runs)
    return finish(fig, "Invariance beyond shifts by training augmentation", placed=(left,)), finding
