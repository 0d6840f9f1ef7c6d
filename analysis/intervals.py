"""The difference between two arms of a claim, with its 95% confidence interval across seeds.

Two arms of runs: Welch's t interval (unequal variances, Welch-Satterthwaite degrees of
freedom). An arm against a constant: the one-sample t interval of the arm's mean. An interval
needs two runs in every arm of runs; where every run of both arms measured the same value, the
interval is that point (an exact answer, such as a net invariant by construction)."""

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
METHOD = "Welch's t"


@dataclass(frozen=True)
class Interval:
    difference: float  # mean of arm a minus mean of arm b
    low: float
    high: float
    n_a: int  # runs in each arm (0: a constant)
    n_b: int

    @property
    def half_width(self) -> float:
        """The smallest difference this n, at the spread measured, could have told from none."""
        return (self.high - self.low) / 2


def difference(a: pd.Series | float, b: pd.Series | float) -> Interval | None:
    """a - b with its CONFIDENCE interval; an arm is its runs' values or a constant (a float).
    None when an arm of runs has fewer than two values."""
    runs = {side: value.astype(float) for side, value in (("a", a), ("b", b)) if isinstance(value, pd.Series)}
    if any(len(values) < 2 for values in runs.values()):
        return None
    mean = {side: runs[side].mean() if side in runs else float(value) for side, value in (("a", a), ("b", b))}
    squared_errors = {side: values.var(ddof=1) / len(values) for side, values in runs.items()}
    estimate, error = mean["a"] - mean["b"], math.sqrt(sum(squared_errors.values()))
    n_a, n_b = (len(runs.get(side, ())) for side in "ab")
    if error == 0:
        return Interval(estimate, estimate, estimate, n_a, n_b)
    dof = error ** 4 / sum(e ** 2 / (len(runs[side]) - 1) for side, e in squared_errors.items())  # Welch-Satterthwaite
    reach = stats.t.ppf((1 + CONFIDENCE) / 2, dof) * error
    return Interval(estimate, estimate - reach, estimate + reach, n_a, n_b)
