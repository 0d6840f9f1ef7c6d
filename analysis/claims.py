"""Statements about a study computed from its runs, never asserted: each says what was measured,
on which runs, and what the numbers say by a rule stated with it."""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import frames, intervals
from harness import contract

EXPLODING, VANISHING = 10.0, 0.1  # first-to-last hidden layer gradient-norm ratios


def geometric_mean(ratios: pd.Series) -> float:
    """How an arm's gradient-norm ratios are averaged, and judged (on their log10): a ratio is
    a factor, and its seeds spread over orders of magnitude (750 to 3,400), where an arithmetic
    mean and its t interval are ruled by the largest."""
    with np.errstate(divide="ignore"):
        return float(10 ** np.log10(ratios).mean())


def flow(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "undefined"
    if ratio > EXPLODING:
        return "exploding"
    if ratio < VANISHING:
        return "vanishing"
    return "neither"


OVERFLOW = 1e300  # MLflow stores an infinite metric as +-1.8e308: beyond this it was not finite


def gradient_flow(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run: its labels, and the ratio of the first layer's gradient norm to the last hidden layer's (the
    first and last conv, from the layer table) at initialisation (step 0) and at the last step
    where every conv's gradient norm was finite, what each ratio says, and the first step with
    a non-finite norm (NaN if none). `layers`: analysis.frames.grad_by_layer's frame."""
    convs = layers[layers["module"] == "Conv2d"]
    labels = [frames.LABELS_COLUMN, *frames.label_columns(layers)]
    rows = []
    for run_id, run in convs.groupby("run_id", sort=False):
        first, last = run["layer_index"].min(), run["layer_index"].max()
        norms = run.pivot_table(index="step", columns="layer_index", values="value", dropna=False)
        finite = (norms.abs() < OVERFLOW).all(axis=1)
        if not finite.any():
            continue
        broken = norms.index[~finite]
        end = norms.index[finite].max() if broken.empty else norms.index[finite & (norms.index < broken.min())].max()
        ratios = {when: norms.loc[step, first] / norms.loc[step, last] for when, step in (("start", 0), ("end", end))}
        rows.append({"run_id": run_id, "net": run["net"].iloc[0], **{c: run[c].iloc[0] for c in labels if c in run},
                     "depth": run["depth"].iloc[0], "end_step": int(end),
                     "diverged": bool(run["diverged"].iloc[0]),
                     "nonfinite_step": float(broken.min()) if not broken.empty else math.nan,
                     "first_layer": run.loc[run["layer_index"] == first, "layer"].iloc[0],
                     "last_layer": run.loc[run["layer_index"] == last, "layer"].iloc[0],
                     "ratio_start": ratios["start"], "flow_start": flow(ratios["start"]),
                     "ratio_end": ratios["end"], "flow_end": flow(ratios["end"])})
    return pd.DataFrame(rows)


def gradient_flow_markdown(table: pd.DataFrame) -> list:
    """The report's section: the rule, then one sentence per arm (its runs' mean ratios), in
    depth order; a run that diverged, or whose gradient overflowed, says so."""
    lines = ["## Gradient flow", "",
             f"Ratio of the first conv layer's gradient norm to the last conv layer's, at initialisation "
             f"(step 0) and at the last step where every gradient norm was finite (the geometric mean over "
             f"an arm's runs, as the claims table takes it on log10): above {EXPLODING:g} the gradient grows toward the "
             f"input (exploding), below {VANISHING:g} it shrinks (vanishing), otherwise neither. The ratio "
             "compares layers within a net: a net whose gradients are large everywhere reads neither.", ""]
    first, *others = frames.label_columns(table) or ["net"]
    for _, arm in table.groupby([*others, first, "depth"], sort=True, dropna=False):
        start, end = geometric_mean(arm["ratio_start"]), geometric_mean(arm["ratio_end"])
        troubles = [f"{int(s)}" for s in arm["nonfinite_step"].dropna()]
        broke = (f"; a gradient norm stopped being finite at step {', '.join(troubles)}" if troubles else "")
        broke += f"; {arm['diverged'].sum()} of its runs diverged" if arm["diverged"].any() else ""
        runs = f"{len(arm)} run{'s' if len(arm) > 1 else ''}"
        kind = "".join(f"{arm[c].iloc[0]}, " for c in others)
        lines.append(f"- {arm['net'].iloc[0]} ({kind}{runs}): "
                     f"{_sig(start)} at step 0 ({flow(start)}), {_sig(end)} at step {int(arm['end_step'].median())} "
                     f"({flow(end)}){broke}; `{arm['first_layer'].iloc[0]}` against `{arm['last_layer'].iloc[0]}`.")
    return lines + [""]


# ---------------------------------------------------------------- convergence

CONVERGED_CHANGE = 0.05  # a run has converged when its training loss changed by less than this ...
FINAL_WINDOW = 0.1  # ... between the last 10% of its training and the 10% before, training
# measured in learning rate spent (lr summed over steps), not in steps: a schedule that anneals
# the lr to 0 flattens the loss per step whether or not the net has learnt, not per unit of lr


def convergence(history: pd.DataFrame) -> pd.DataFrame:
    """Per run: the mean training loss and accuracy over the last FINAL_WINDOW of its steps, the
    relative change of the loss between the last FINAL_WINDOW of its training (in lr spent, see
    training_spent) and the window before, and whether that is under CONVERGED_CHANGE. A window
    with no logged point leaves the change unknown (not converged)."""
    rows = []
    keys = [contract.TRAIN_LOSS, contract.TRAIN_ACC, contract.LR]
    for run_id, run in history[history["key"].isin(keys)].groupby("run_id"):
        loss = run[run["key"] == contract.TRAIN_LOSS].sort_values("step")
        acc = run[run["key"] == contract.TRAIN_ACC]
        end = loss["step"].max()
        spent = training_spent(loss["step"], run[run["key"] == contract.LR])
        last = spent > spent.max() * (1 - FINAL_WINDOW)
        before = (spent > spent.max() * (1 - 2 * FINAL_WINDOW)) & ~last
        latest, previous = loss.loc[last, "value"].mean(), loss.loc[before, "value"].mean()
        change = abs(previous - latest) / previous if before.any() and previous > 0 else math.nan
        def window(at):  # the quantity: the mean over the FINAL_WINDOW of steps up to `at` of them
            return loss.loc[(loss["step"] > end * (at - FINAL_WINDOW)) & (loss["step"] <= end * at), "value"].mean()

        rows.append({"run_id": run_id, "final_train_loss": window(1.0), "loss_change": change,
                     "converged": bool(change < CONVERGED_CHANGE),
                     "final_train_acc": acc.loc[acc["step"] > end * (1 - FINAL_WINDOW), "value"].mean(),
                     **{_earlier("final training loss", at): window(at) for at in EARLIER}})
    return pd.DataFrame(rows, columns=["run_id", "final_train_loss", "loss_change", "converged", "final_train_acc",
                                       *[_earlier("final training loss", at) for at in EARLIER]])


EARLIER = (0.5, 0.75)  # where a comparison is read again, as fractions of the steps: see _earlier_verdicts


def _earlier(quantity: str, at: float) -> str:
    """The column of a quantity read at an earlier point of training."""
    return f"{quantity} at {at:.0%}"


def training_spent(steps: pd.Series, lr: pd.DataFrame) -> pd.Series:
    """At each logged step, the learning rate spent so far: the lr in force at each point (the
    last one logged at or before it) times the steps since the point before. The steps themselves
    where the lr was constant over the last 2 FINAL_WINDOW of the steps (a constant lr, the last
    stage of a step schedule: there the two are the same, and a decay before does not enter the
    windows), and where no lr was logged at or before the first point."""
    logged = lr.drop_duplicates("step").set_index("step")["value"].sort_index()
    rate = logged.reindex(steps.to_numpy(), method="ffill")
    if rate.isna().any() or not (rate > 0).any():
        return steps
    late = rate[rate.index >= steps.max() * (1 - 2 * FINAL_WINDOW)]
    if np.allclose(late, late.iloc[-1], rtol=1e-3, atol=0):
        return steps
    spent = (rate.to_numpy() * np.diff(steps.to_numpy(), prepend=0)).cumsum()
    return pd.Series(spent, index=steps.index)


# ---------------------------------------------------------------- the claims of the lectures


@dataclass(frozen=True)
class Claim:
    """`a` <relation> `b` in `quantity`, where an arm is {frames column: value} ("min"/"max":
    the extreme of that column among the runs) or a constant. relation ">": a exceeds b;
    "<=": a is not above b by more than `margin` (a fraction of b's value; 0: not at all).
    `trained`: the quantity depends on how far training got, so the verdict needs converged
    runs (and, for an invariance score, nets above chance); False for what is measured before
    training or decided by the architecture. The claims themselves: analysis.studies."""
    statement: str
    quantity: str
    a: object
    relation: str
    b: object
    trained: bool = True
    margin: float = 0.0


QUANTITIES = {  # how each quantity is read, for the report
    "final training loss": f"mean training loss over the last {FINAL_WINDOW:.0%} of steps",
    "loss variation": "landscape probe's loss variation, mean over training",
    "shift consistency": "test-set shift consistency",
    "log10 gradient ratio": "log10 of the first conv layer's gradient norm / last conv layer's, at step 0 (1: ten "
                            "times as large at the input, -1: a tenth)",
    "|log10 gradient ratio|": "|log10| of that ratio at step 0 (0: the gradient is as large at the input as at the output)",
    "generalisation gap": f"training accuracy (last {FINAL_WINDOW:.0%} of steps, augmented batches) - test accuracy",
    **{f"{f} consistency": f"test-set {f} consistency" for f in contract.INVARIANCE_FAMILIES},
}
HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, TOO_SHORT = "holds", "does not hold", "inconclusive", "budget too short"
ONE_RUN, NO_RUN = "inconclusive (one run in an arm)", "inconclusive (no usable run in an arm)"
NO_SPREAD = "inconclusive (no spread across seeds)"


CHANCE_ERRORS = 2  # a net is at chance when its accuracy on the scored sample is within this many
# binomial standard errors of chance (1 / classes) for the sample's size, or below it


# where each invariance family's accuracy curve (contract.family_acc) has the untransformed image
IDENTITY_POINTS = tuple((contract.family_acc(family), point) for family, point in
                        (("rotation", 3), ("scale", 2), ("illumination", 4)))


def at_chance(frame: pd.DataFrame, history: pd.DataFrame) -> pd.Series:
    """Per run (frame's rows): whether its accuracy on the invariance probes' test sample (the
    unshifted point of test/acc_at_shift, else the identity point of a family's curve) is at chance,
    by CHANCE_ERRORS (at or below chance where the run does not say the sample's size). False
    where the run does not say how many classes it had or how it scored (nothing to judge by)."""
    def number(column):
        return _numbers(frame, column)

    accuracy = pd.Series(math.nan, index=frame.index)
    for key, identity in ((contract.SHIFT_ACC_DX, number("param.probes.shift.max")), *IDENTITY_POINTS):
        points = history[history["key"] == key]  # the same images untransformed, whichever probe scored them
        at = points.merge(pd.DataFrame({"run_id": frame["run_id"], "step": identity}), on=["run_id", "step"])
        accuracy = accuracy.fillna(frame["run_id"].map(at.drop_duplicates("run_id").set_index("run_id")["value"]))
    images = number("param.probes.shift.images").fillna(number("param.probes.invariance.images"))
    images = images.clip(upper=number("param.data.test_size").fillna(np.inf))  # the probes' sample, as drawn
    chance = 1 / number(f"tag.{contract.CLASSES}")
    margin = (CHANCE_ERRORS * np.sqrt(chance * (1 - chance) / images.where(images > 0))).fillna(0)  # no size: at or below
    return (accuracy <= chance + margin).fillna(False).astype(bool)


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column of frame as numbers: NaN where it is missing or not a number."""
    return pd.to_numeric(frame.get(column, pd.Series(math.nan, index=frame.index)), errors="coerce")


INVARIANCE_QUANTITIES = ("shift consistency", *[f"{f} consistency" for f in contract.INVARIANCE_FAMILIES])
VALIDATION_SCORES = {"shift consistency": f"val/{contract.SHIFT_CONSISTENCY}",  # each score's reading at a validation pass
                     **{f"{f} consistency": f"val/{f}_{contract.CONSISTENCY}" for f in contract.INVARIANCE_FAMILIES}}
READ_AT_VALIDATION = (*VALIDATION_SCORES, "generalisation gap")  # settle check: validation_readings
# what a net at chance scores trivially: it is perfectly invariant, its train and test accuracy
# match (no gap), and it sits on a plateau where the loss barely varies along the gradient
CHANCE_BLIND = (*INVARIANCE_QUANTITIES, "generalisation gap", "loss variation")


def validation_readings(history: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Per run (frame's rows): each quantity of READ_AT_VALIDATION at its last validation pass at
    or before each EARLIER point of its steps, for the settle check (_earlier_verdicts): a score
    as that pass measured it on the validation images, the generalisation gap as the training
    accuracy over the FINAL_WINDOW of steps before the pass minus the pass's validation accuracy.
    NaN where no pass comes before the end by then, where two points would read the same pass,
    and where the net was at chance on the validation set at that pass (CHANCE_ERRORS; its
    scores are no evidence)."""
    columns = [_earlier(q, at) for at in EARLIER for q in READ_AT_VALIDATION]
    keys = [contract.TRAIN_LOSS, contract.TRAIN_ACC, contract.VAL_ACC, *VALIDATION_SCORES.values()]
    chance = 1 / _numbers(frame, f"tag.{contract.CLASSES}")
    # judged as the scores were measured: on the probes' validation sample (at most the split, if a count)
    images = _numbers(frame, "param.probes.shift.val_images").fillna(_numbers(frame, "param.probes.invariance.val_images"))
    split = _numbers(frame, "param.data.val_size")
    images = images.clip(upper=split.where(split >= 1).fillna(np.inf))
    margin = (CHANCE_ERRORS * np.sqrt(chance * (1 - chance) / images.where(images > 0))).fillna(0)  # no size: chance
    floor = pd.Series(np.asarray(chance + margin, dtype=float), index=frame["run_id"]).fillna(-np.inf)  # no classes
    rows = []
    for run_id, run in history[history["key"].isin(keys) & history["run_id"].isin(floor.index)].groupby("run_id"):
        series = {key: points.drop_duplicates("step", keep="last").set_index("step")["value"].sort_index()
                  for key, points in run.groupby("key")}
        if contract.TRAIN_LOSS not in series or contract.VAL_ACC not in series:
            continue
        end, passes, row, read = series[contract.TRAIN_LOSS].index.max(), series[contract.VAL_ACC], {"run_id": run_id}, set()
        for at in EARLIER:
            before = passes[(passes.index <= end * at) & (passes.index < end)]
            if before.empty or before.index[-1] in read or before.iloc[-1] <= floor[run_id]:
                continue
            step, accuracy = before.index[-1], before.iloc[-1]
            read.add(step)
            for quantity, key in VALIDATION_SCORES.items():
                row[_earlier(quantity, at)] = series.get(key, pd.Series(dtype=float)).get(step, math.nan)
            train_acc = series.get(contract.TRAIN_ACC, pd.Series(dtype=float))
            row[_earlier("generalisation gap", at)] = (
                train_acc[(train_acc.index > step - end * FINAL_WINDOW) & (train_acc.index <= step)].mean() - accuracy)
        rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", *columns])


def measures(history: pd.DataFrame, runs: pd.DataFrame, layers: pd.DataFrame, flow: pd.DataFrame | None = None
             ) -> pd.DataFrame:
    """One row per run: its axes and labels, whether it is usable (finished, not diverged) and
    converged, and each quantity of QUANTITIES it has (NaN where it has not). flow: the runs'
    gradient_flow table, if the caller has it already."""
    frame = frames.labelled_runs(runs).merge(convergence(history), on="run_id", how="left")

    def metric(key):
        return frame.get(f"metric.{key}", pd.Series(math.nan, index=frame.index))

    frame["usable"] = frames.finished(frame) & ~frame["diverged"]
    frame["final training loss"] = frame["final_train_loss"]
    frame["generalisation gap"] = frame["final_train_acc"] - metric(contract.TEST_ACC)
    frame["shift consistency"] = metric(f"test/{contract.SHIFT_CONSISTENCY}")
    for family in contract.INVARIANCE_FAMILIES:
        frame[f"{family} consistency"] = metric(f"test/{family}_{contract.CONSISTENCY}")
    frame["at_chance"] = at_chance(frame, history)
    variation = history[history["key"] == contract.LANDSCAPE_LOSS_VARIATION].groupby("run_id")["value"].mean()
    frame["loss variation"] = frame["run_id"].map(variation)
    if flow is None:
        flow = gradient_flow(frames.grad_by_layer(history, runs, layers))
    ratio = flow.set_index("run_id")["ratio_start"] if not flow.empty else pd.Series(dtype=float)
    with np.errstate(divide="ignore"):
        frame["log10 gradient ratio"] = np.log10(frame["run_id"].map(ratio))
    frame["|log10 gradient ratio|"] = frame["log10 gradient ratio"].abs()
    quantities = list(QUANTITIES)
    frame[quantities] = frame[quantities].replace([np.inf, -np.inf], np.nan)  # 0 or inf: no number to compare
    return frame.merge(validation_readings(history, frame), on="run_id", how="left")


def verdicts(measured: pd.DataFrame, swept: list, studies: list) -> pd.DataFrame:
    """One row per claim of the studies (analysis.studies) that the runs can speak to, per
    combination of the other swept axes (seeds excepted: they give the spread)."""
    rows = []
    label_axes = frames.label_axes(measured)
    for study, claim in [(s, c) for s in studies for c in s.claims]:
        if measured[claim.quantity].isna().all():
            continue
        own = {label_axes.get(c, c) for side in (claim.a, claim.b) if isinstance(side, dict) for c in side}
        context = _context(measured, swept, own)
        for values, runs in (measured.groupby(context, dropna=False, sort=True) if context else [((), measured)]):
            judged = _judge(claim, runs)
            if judged is not None:
                where = ", ".join(f"{axis}={value}" for axis, value in zip(context, values))
                rows.append({"study": study.name, "claim": claim.statement, "where": where,
                             "quantity": QUANTITIES[claim.quantity], **judged})
    return pd.DataFrame(rows)


def _context(measured: pd.DataFrame, swept: list, own: set) -> list:
    """The swept axes a claim is judged separately for: not its own, not the seed, and not one
    its own axes decide (each optimiser file has its own weight decay: that is not a context)."""
    own = [axis for axis in own if axis in measured]

    def decided(axis):
        return bool(own) and measured.groupby(own, dropna=False)[axis].nunique(dropna=False).le(1).all()

    return [axis for axis in swept if axis not in own and axis != "seed" and not decided(axis)]


def _judge(claim: Claim, runs: pd.DataFrame):
    arms = [_arm(side, runs) for side in (claim.a, claim.b)]
    groups = [arm for arm in arms if isinstance(arm, pd.DataFrame)]
    if any(g.empty for g in groups) or (len(groups) == 2 and set(groups[0]["run_id"]) == set(groups[1]["run_id"])):
        return None  # the runs do not have both arms
    values = [_values(arm, claim) for arm in arms]
    labels = frames.label_axes(runs)
    described = {name: _describe(side, arm, value, labels)
                 for name, side, arm, value in zip("ab", (claim.a, claim.b), arms, values)}
    result = {"a": described["a"], "relation": claim.relation, "b": described["b"]}
    involved = pd.concat(groups)
    lost = involved[~_counts(involved, claim) | involved[claim.quantity].isna()]
    left_out = f"; left out: {_names(lost)}" if len(lost) else ""
    if any(len(v) == 0 for v in values):
        return {**result, "verdict": NO_RUN, "why": "no usable run in an arm: " + _names(lost)}
    unconverged = involved[involved["usable"] & (involved["converged"] != True)]  # noqa: E712
    earlier = None
    if claim.trained and not unconverged.empty:
        named = "not converged: " + ", ".join(
            f"{r.run_name} (loss changed {r.loss_change:.0%})" if pd.notna(r.loss_change)
            else f"{r.run_name} (too few logged steps)" for r in unconverged.itertuples())
        earlier = _earlier_verdicts(claim, arms, runs)
        if earlier is None:
            return {**result, "verdict": TOO_SHORT, "why": named}
    margin = _margin(claim, values)
    interval = _interval(claim, values, arms, margin)
    if interval is not None and claim.trained and interval.low == interval.high:
        interval = None  # no spread in either arm: a trained quantity's seeds did not vary, not an exact answer
    if interval is None:
        point = values[0].mean() - values[1].mean()
        side = "on the claimed side" if _claimed(point, point, claim.relation, margin) else "on the other side"
        single = [len(v) < 2 for v, arm in zip(values, arms) if isinstance(arm, pd.DataFrame)]
        spread = f"one run in {'each arm' if all(single) else 'an arm'}" if any(single) else "no spread across seeds"
        return {**result, "difference": point, "margin": margin, "verdict": ONE_RUN if any(single) else NO_SPREAD,
                "why": f"the arms' difference {_sig(point)} is {side}, with {spread} to judge it by: sweep "
                       f"{'trainer.seed' if any(single) else 'more seeds'}{left_out}"}
    numbers = {"difference": interval.difference, "low": interval.low, "high": interval.high, "margin": margin}
    verdict = _verdict(interval, claim.relation, margin)
    why = {HOLDS: f"the {intervals.CONFIDENCE:.0%} interval lies on the claimed side",
           DOES_NOT_HOLD: f"the {intervals.CONFIDENCE:.0%} interval lies on the other side",
           INCONCLUSIVE: f"the {intervals.CONFIDENCE:.0%} interval reaches both sides of {_sig(margin)}: at this "
                         f"spread, n={'/'.join(str(n) for n in (interval.n_a, interval.n_b) if n)} tells only a "
                         f"difference beyond {_sig(interval.half_width)}"}[verdict]
    if earlier is not None:
        points = _readings(claim)
        before = set(earlier)
        if before == {verdict} and verdict != INCONCLUSIVE:
            why += f"; {named}, but the verdict was the same at {points} (the comparison has settled)"
        elif len(before) == 1 and INCONCLUSIVE not in before:
            return {**result, **numbers, "verdict": TOO_SHORT,
                    "why": f"{named}; the verdict moved: {earlier[0]} at {points}, {verdict} at the end"}
        else:
            readings = ", ".join(f"{v} at {at:.0%}" for at, v in zip(EARLIER, earlier))
            where = " (validation passes)" if claim.quantity in READ_AT_VALIDATION else ""
            return {**result, **numbers, "verdict": TOO_SHORT, "why": f"{named}; the comparison has not settled: "
                                                                      f"{readings} of training{where}, {verdict} at the end"}
    return {**result, **numbers, "verdict": verdict, "why": why + left_out}


def _readings(claim: Claim) -> str:
    """Where _earlier_verdicts read the claim's quantity, in words."""
    points = f"{' and '.join(f'{at:.0%}' for at in EARLIER)} of training"
    return f"the validation passes by {points}" if claim.quantity in READ_AT_VALIDATION else points


def _earlier_verdicts(claim: Claim, arms: list, runs: pd.DataFrame) -> list | None:
    """Where not every compared run converged: the verdict read from the same runs at each
    EARLIER point of their training (the training loss: the window of steps before it; a score
    or a gap: the validation pass before it, validation_readings). The comparison has settled
    if each is the same definite verdict as at the end. None where the quantity has no earlier
    reading in a run that counts at the end, or an arm too few runs for an interval. Both arms
    anneal alike, so a schedule that flattens every curve cannot make a comparison look settled
    that was not."""
    verdicts = []
    for at in EARLIER:
        column = _earlier(claim.quantity, at)
        if column not in runs:
            return None
        earlier = dataclasses.replace(claim, quantity=column)
        values = [_values(arm, earlier) for arm in arms]
        same_runs = all(v.index.equals(_values(arm, claim).index) for v, arm in zip(values, arms))
        if not same_runs or any(len(v) < 2 for v, arm in zip(values, arms) if isinstance(arm, pd.DataFrame)):
            return None
        margin = _margin(claim, values)
        interval = _interval(claim, values, arms, margin)
        if interval is None or interval.low == interval.high:
            return None
        verdicts.append(_verdict(interval, claim.relation, margin))
    return verdicts


def _margin(claim: Claim, values: list) -> float:
    """A "does not degrade" claim's margin: the stated fraction of arm B's mean; 0 otherwise."""
    return claim.margin * abs(values[1].mean()) if claim.relation == "<=" else 0.0


_OTHER = {">": "<=", "<=": ">"}


def _verdict(interval: intervals.Interval, relation: str, margin: float) -> str:
    """Where the interval of a - b lies: on the claimed side, on the other, or across."""
    if _claimed(interval.low, interval.high, relation, margin):
        return HOLDS
    return DOES_NOT_HOLD if _claimed(interval.low, interval.high, _OTHER[relation], margin) else INCONCLUSIVE


def _interval(claim: Claim, values: list, arms: list, margin: float) -> intervals.Interval | None:
    """The interval of a - b. Against a margin, a fraction m of b's mean, which is measured too:
    the interval of a - (1 + m) b (b's spread counts (1 + m) times), moved by the margin, so that
    it lies at or below the margin exactly when a - (1 + m) b lies at or below 0."""
    sides = [v if isinstance(arm, pd.DataFrame) else float(arm) for v, arm in zip(values, arms)]
    if margin == 0:
        return intervals.difference(*sides)
    scale = 1 + claim.margin * np.sign(values[1].mean())
    scaled = intervals.difference(sides[0], sides[1] * scale)
    if scaled is None:
        return None
    return intervals.Interval(scaled.difference + margin, scaled.low + margin, scaled.high + margin,
                              scaled.n_a, scaled.n_b)


def _claimed(low: float, high: float, relation: str, margin: float) -> bool:
    """Whether an interval [low, high] of a - b lies wholly on the side `relation` claims."""
    return low > margin if relation == ">" else high <= margin


def _sig(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def _arm(side, runs: pd.DataFrame):
    """The runs of an arm (a frame), or a constant."""
    if not isinstance(side, dict):
        return float(side)
    chosen = runs
    for column, value in side.items():
        if column not in runs or runs[column].isna().all():
            return runs.iloc[0:0]
        if value in ("min", "max"):
            value = getattr(runs[column], value)()
        chosen = chosen[chosen[column] == value]
    return chosen


def _counts(runs: pd.DataFrame, claim: Claim) -> pd.Series:
    """Which runs a claim may use: finished and not diverged, and for a quantity of CHANCE_BLIND,
    above chance; for a quantity measured before training (the gradient at step 0) or one the
    architecture decides (exact invariance), any run that logged it."""
    if not claim.trained:
        return pd.Series(True, index=runs.index)
    return runs["usable"] & ~(runs["at_chance"] & (claim.quantity in CHANCE_BLIND))


def _values(arm, claim: Claim) -> pd.Series:
    if not isinstance(arm, pd.DataFrame):
        return pd.Series([arm])
    return arm.loc[_counts(arm, claim), claim.quantity].dropna()


def _describe(side, arm, values: pd.Series, labels: dict) -> str:
    """`plain, depth=56: 0.4123 ± 0.011 (n=3)`: what defines the arm (a label column by its
    word), then its value."""
    if not isinstance(arm, pd.DataFrame):
        return f"{arm:g}"
    first = arm.iloc[0]
    label = ", ".join(str(first[c]) if c in labels else f"{c}={first[c]}" for c in side)
    if values.empty:
        return f"{label}: no value"
    spread = f" ± {_sig(values.std(ddof=1))}" if len(values) > 1 else ""
    return f"{label}: {_sig(values.mean())}{spread} (n={len(values)})"


def _names(runs: pd.DataFrame) -> str:
    return ", ".join(f"{r.run_name} ({_state(r)})" for r in runs.itertuples())


def _state(run) -> str:
    if run.diverged:
        return "diverged"
    return "at chance" if getattr(run, "at_chance", False) and run.status == "FINISHED" else run.status.lower()


RULE = (f"Each claim compares two arms in one measured quantity: an arm's value is the mean over its runs "
        f"± the standard deviation across seeds (n runs). The difference A - B comes with its "
        f"{intervals.CONFIDENCE:.0%} confidence interval ({intervals.METHOD}: unequal variances; against a constant, "
        f"the one-sample t interval). **{HOLDS}**: the interval lies wholly on the claimed side: above 0 for "
        f"A > B; for A <= B (A is not above B), at or below the margin the claim states, a fraction m of B "
        f"(B's mean is measured too: the interval is that of A - (1 + m) B, moved by the margin); "
        f"**{DOES_NOT_HOLD}**: it lies wholly on the other side; **{INCONCLUSIVE}**: it reaches both, with the "
        f"smallest difference this n could have told at the spread measured (the interval's half-width); "
        f"**{ONE_RUN}**, **{NO_SPREAD}** (a trained quantity equal in every run of both arms): no spread to "
        f"judge by, and the table says on which side the difference falls; "
        f"**{NO_RUN}**: an arm has no usable run (finished, not diverged); **{TOO_SHORT}**: a compared run "
        f"has not converged: its training loss changed by {CONVERGED_CHANGE:.0%} or more between the last "
        f"{FINAL_WINDOW:.0%} of its training and the {FINAL_WINDOW:.0%} before, training counted in learning rate "
        "spent (the lr summed over steps), so that a schedule annealing the lr to 0 cannot flatten it, and in steps "
        f"where the lr was constant over the last {2 * FINAL_WINDOW:.0%} of them; unless the comparison has "
        f"settled: for the training loss, the same definite verdict read from the same runs at "
        f"{' and '.join(f'{at:.0%}' for at in EARLIER)} of their steps and at the end; for an invariance score or a "
        f"generalisation gap, read at each run's last validation pass by {' and by '.join(f'{at:.0%}' for at in EARLIER)} "
        f"of its steps (two different passes, the net above chance on the validation set at each; the gap there: "
        f"training accuracy over the {FINAL_WINDOW:.0%} of steps before the pass minus the validation accuracy) and at "
        "the end (the runs are named; where it has not settled, the row gives the interval at the end and the "
        "verdict at each reading). Claims "
        "about the initialisation need no convergence, and count a run that diverged later: its step-0 value was "
        f"measured before. An invariance score, a generalisation gap or a loss variation counts only from a net above "
        f"chance: a run whose accuracy on the scored sample is within {CHANCE_ERRORS} binomial standard errors of "
        "chance (1 / classes) is left out, named (at chance): a net that predicts one class is perfectly invariant, "
        "has no gap between training and test, and sits on a plateau where the loss barely varies. Each row is its "
        f"own test at {intervals.CONFIDENCE:.0%}: among many rows, a few may hold or fail by chance.")


def claims_markdown(table: pd.DataFrame) -> list:
    """The report's claims section: the rule, then one table per study."""
    lines = ["## Claims", "", RULE, ""]
    for study, rows in table.groupby("study", sort=False):
        lines += [f"### {study}", "", *claims_table(rows), ""]
    return lines


def claims_table(rows: pd.DataFrame) -> list:
    """The markdown table of claim rows (verdicts' columns)."""
    lines = [f"| claim | measured | arm A | | arm B | A - B, {intervals.CONFIDENCE:.0%} interval | verdict | why |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows.fillna({"where": ""}).itertuples():
        where = f" ({r.where})" if r.where else ""
        lines.append(f"| {r.claim}{where} | {r.quantity} | {r.a} | {r.relation} | {r.b} | "
                     f"{interval_text(r._asdict())} | **{r.verdict}** | {r.why} |")
    return lines


def interval_text(row: dict) -> str:
    """`0.41 [0.347, 0.453]`, with `(margin 0.021)` for a claim that A is not above B; the
    point alone where there is no interval, a dash where there is no difference."""
    point, low, high = (row.get(k, math.nan) for k in ("difference", "low", "high"))
    if pd.isna(point):
        return "-"
    if row.get("relation") != "<=":
        return _sig(point) + ("" if pd.isna(low) else f" [{_sig(low)}, {_sig(high)}]")
    digits = 3
    while digits < 17 and pd.notna(high) and high != row["margin"] and _sig(high, digits) == _sig(row["margin"], digits):
        digits += 1  # the bound and the margin it is judged against never print alike unless they are
    interval = "" if pd.isna(low) else f" [{_sig(low)}, {_sig(high, digits)}]"
    return f"{_sig(point)}{interval} (margin {_sig(row['margin'], digits)})"
