"""What every figure shares: its size, the Skip it raises when the selection lacks what it
compares, the layout that keeps legends off the data, and the labels of an arm."""

import matplotlib

matplotlib.use("Agg")  # files only, no display

import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis import frames  # noqa: E402
from analysis.claims import at_chance  # noqa: E402

FIGSIZE = (10, 6)  # inches
DPI = 100  # so each PNG is 1000 x 600 pixels


class Skip(Exception):
    """The selection lacks what this figure compares; the message says what."""


def need(condition, reason):
    if not condition:
        raise Skip(reason)


def need_model_axis(runs):
    """Depth or an axis the model family labels (residual, batchnorm for a ResNet) was swept."""
    axes = ["depth", *dict.fromkeys(frames.label_axes(runs).values())]
    need(set(axes) & set(frames.swept(runs)), f"{', '.join(axes[:-1])} and {axes[-1]} were not swept"
         if len(axes) > 1 else "depth was not swept")


def variant_column(runs):
    """Each run's arm as its labels name it: the label columns whose axis varied (the first
    label column where none did), joined."""
    axes = frames.swept(runs)
    columns = frames.label_columns(runs)
    varied = [column for column, axis in frames.label_axes(runs).items() if axis in axes] or columns[:1]
    if not varied:
        return lambda f: f["net"]
    return lambda f: frames.as_text(f[varied]).agg(", ".join, axis=1)


def by_variant_and_depth(data, runs):
    """The frame with a panel label (`variant`) and depth as category labels, and the depths
    in numeric order (not "14" before "8")."""
    data = data.assign(variant=variant_column(runs)(data))
    depths = [str(d) for d in sorted(data["depth"].unique())]
    return data.assign(depth=data["depth"].astype(str)), depths


def run_title(row, axes) -> str:
    """A panel title naming the run's value of every axis the selection varies, in its labels' words."""
    def word(axis):
        label = frames.label_word(row, axis)
        return label if label is not None else f"{axis} {row[axis]}"

    return ", ".join(word(axis) for axis in axes) or "all runs"


def finish(grid_or_fig, title, placed=()):
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


def from_zero(ax, top=None):
    """A y-axis from 0, so that a small difference does not look large."""
    ax.set_ylim(0, top if top is not None else ax.get_ylim()[1])


def ratio_sentence(finals: pd.DataFrame, group: str, what: str) -> str:
    """`plain: depth 56's training loss is 2.30x depth 20's` for each group, from each run's
    value (mean over seeds); `what` names the value as the claims table does."""
    sentences = []
    for name, rows in finals.groupby(group, sort=True):
        means = rows.groupby("depth")["value"].mean()
        if len(means) > 1 and means.iloc[0] > 0:
            sentences.append(f"{name}: depth {means.index[-1]}'s {what} is {sig(means.iloc[-1] / means.iloc[0])}x "
                             f"depth {means.index[0]}'s")
    return "; ".join(sentences) + "." if sentences else ""


def above_chance(history, runs):
    """The runs whose invariance scores count: not at chance (claims.at_chance), as in the claims."""
    return runs[~at_chance(runs, history).to_numpy()]


def chance_note(history, runs) -> str:
    """` Left out of the scores, at chance on the scored sample: d8 s0, d8 s1.`, or nothing: the
    runs claims.at_chance finds, named in an invariance figure's caption."""
    names = runs.loc[at_chance(runs, history).to_numpy(), "run_name"]
    return f" Left out of the scores, at chance on the scored sample (a net at chance is perfectly invariant): " \
        f"{', '.join(names)}." if len(names) else ""


def sig(x: float) -> str:
    """x to 3 significant figures, trailing zeros kept: 1.00, 0.0805, 12.5."""
    return f"{x:#.3g}".rstrip(".")


def label_bars(ax):
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
