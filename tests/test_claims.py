"""Verdicts on the lecture claims, on constructed runs whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from scipy import stats

from analysis.claims import (CONVERGED_CHANGE, DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NO_RUN, ONE_RUN, TOO_SHORT,
                             claims_markdown, convergence, measures, verdicts)
from analysis.frames import swept
from analysis.studies import STUDIES

EMPTY_LAYERS = pd.DataFrame(columns=["run_id", "metric", "layer", "module"])


def history(run_id, losses, every=10):
    """train/loss (and a train/acc of 0.9) logged every `every` steps."""
    rows = [(run_id, "train/loss", every * (i + 1), loss) for i, loss in enumerate(losses)]
    rows += [(run_id, "train/acc", every * (i + 1), 0.9) for i in range(len(losses))]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def run(run_id, depth, residual, seed, test_acc=0.8, status="FINISHED", diverged=False):
    return {"run_id": run_id, "run_name": run_id, "status": status, "diverged": diverged, "job_num": 0,
            "param.model.depth": depth, "param.model.residual": residual, "param.model.batchnorm": True,
            "param.trainer.seed": seed, "metric.test/acc": test_acc}


def flat(level, n=20):
    return [level] * n


def falling(start, n=20, rate=0.03):
    return [start * (1 - rate) ** i for i in range(n)]


def test_convergence_compares_the_last_tenth_of_steps_with_the_tenth_before():
    frame = pd.concat([history("flat", flat(1.0)), history("falling", falling(2.0)), history("short", [2.0, 1.0])])
    table = convergence(frame).set_index("run_id")
    assert table.loc["flat", "loss_change"] == 0 and table.loc["flat", "converged"]
    # 200 steps: the last tenth is steps 181-200 (points at 190 and 200), the tenth before 161-180 (170, 180)
    before, last = np.mean(falling(2.0)[16:18]), np.mean(falling(2.0)[18:20])
    assert table.loc["falling", "loss_change"] == pytest.approx((before - last) / before)
    assert table.loc["falling", "final_train_loss"] == pytest.approx(last)
    assert not table.loc["falling", "converged"] and table.loc["falling", "loss_change"] > CONVERGED_CHANGE
    assert np.isnan(table.loc["short", "loss_change"]) and not table.loc["short", "converged"]  # no window before


def test_an_annealed_but_untrained_run_is_not_converged():
    """A cosine schedule to 0 over 200 steps; the loss falls with the lr spent and never levels
    off, so per step it flattens at the end (the rule by steps would call it converged)."""
    steps = np.arange(10, 201, 10)
    lr = 0.1 * 0.5 * (1 + np.cos(np.pi * steps / 200))
    spent = np.cumsum(lr * 10)
    loss = 2.3 * (1 - 0.6 * spent / spent[-1])
    rows = [("annealed", key, int(step), value) for step, l_value, r_value in zip(steps, loss, lr)
            for key, value in (("train/loss", l_value), ("train/acc", 0.3), ("train/lr", r_value))]
    frame = pd.concat([pd.DataFrame(rows, columns=["run_id", "key", "step", "value"]), history("constant", flat(1.0))])
    table = convergence(frame).set_index("run_id")
    by_steps = abs(loss[-2:].mean() - loss[-4:-2].mean()) / loss[-4:-2].mean()
    assert by_steps < CONVERGED_CHANGE  # what the steps alone would have said
    last, before = spent > 0.9 * spent[-1], (spent > 0.8 * spent[-1]) & (spent <= 0.9 * spent[-1])
    expected = (loss[before].mean() - loss[last].mean()) / loss[before].mean()
    assert table.loc["annealed", "loss_change"] == pytest.approx(expected) and expected > CONVERGED_CHANGE
    assert not table.loc["annealed", "converged"]
    assert table.loc["annealed", "final_train_loss"] == pytest.approx(loss[-2:].mean())  # the quantity: last 10% of steps
    assert table.loc["constant", "converged"]


def test_the_last_stage_of_a_step_schedule_is_judged_in_steps():
    """lr 0.1, then /10 at 50% and 75% of 200 steps; the loss drops at each decay and is flat over
    the last quarter: converged. Counted in lr spent, the windows would straddle the first decay."""
    steps = np.arange(10, 201, 10)
    lr = np.where(steps <= 100, 0.1, np.where(steps <= 150, 0.01, 0.001))
    loss = np.where(steps <= 100, 0.6, np.where(steps <= 150, 0.2, 0.15))
    rows = [("step", key, int(step), value) for step, l_value, r_value in zip(steps, loss, lr)
            for key, value in (("train/loss", l_value), ("train/acc", 0.9), ("train/lr", r_value))]
    table = convergence(pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])).set_index("run_id")
    assert table.loc["step", "loss_change"] == 0 and table.loc["step", "converged"]


def test_a_trained_quantity_without_spread_is_no_exact_answer():
    verdict, table = depth_study({**seeds("p", 20, 0.5, 0.5), **seeds("p", 56, 0.5000001, 0.5000001)})
    assert verdict[PLAIN_DEGRADES] == "inconclusive (no spread across seeds)"
    assert table.loc[PLAIN_DEGRADES, "why"].startswith("the arms' difference 1e-07 is on the claimed side, with no spread across seeds")


def depth_study(losses: dict, **runs_overrides):
    """Runs named <arch><depth>s<seed> with the given final loss levels (flat: converged)."""
    rows, histories = [], []
    for name, loss in losses.items():
        arch, depth, seed = name[0], int(name[1:].split("s")[0]), int(name.split("s")[1])
        rows.append(run(name, depth, arch == "r", seed, **runs_overrides.get(name, {})))
        histories.append(history(name, loss if isinstance(loss, list) else flat(loss)))
    runs = pd.DataFrame(rows)
    table = verdicts(measures(pd.concat(histories), runs, EMPTY_LAYERS), swept(runs), STUDIES)
    return table.set_index("claim")["verdict"], table.set_index("claim")


PLAIN_DEGRADES = "Plain nets degrade with depth: the deepest trains worse than the shallowest"
RESIDUAL_DOES_NOT = "Residual nets do not degrade with depth: the deepest trains within 5% of the shallowest's loss"
RESIDUAL_HELPS = "At the greatest depth, residual connections make the net train better"


def seeds(arch, depth, *levels):
    return {f"{arch}{depth}s{seed}": level for seed, level in enumerate(levels)}


def welch(a, b):
    """scipy's own Welch interval of mean(a) - mean(b): the independent answer."""
    return stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)


def non_inferior(a, b, margin=0.05):
    """scipy's Welch interval of mean(a) - (1 + margin) mean(b): a within the margin of b, where
    b's mean is measured too."""
    return welch(a, (1 + margin) * np.asarray(b))


def test_a_verdict_is_where_the_welch_interval_lies():
    p20, p56 = [0.50, 0.52, 0.51], [0.90, 0.94, 0.92]
    r20, r56 = [0.418, 0.422, 0.420], [0.415, 0.425, 0.420]
    verdict, table = depth_study({**seeds("p", 20, *p20), **seeds("p", 56, *p56),
                                  **seeds("r", 20, *r20), **seeds("r", 56, *r56)})
    row = table.loc[PLAIN_DEGRADES]
    expected = welch(p56, p20)
    assert verdict[PLAIN_DEGRADES] == HOLDS and expected.low > 0
    assert (row["low"], row["high"]) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert row["difference"] == pytest.approx(0.41)
    assert row["a"] == f"plain, depth=56: 0.92 ± {np.std(p56, ddof=1):.3g} (n=3)"
    # does not degrade: the whole interval under the margin, 5% of residual-20's loss
    row = table.loc[RESIDUAL_DOES_NOT]
    assert verdict[RESIDUAL_DOES_NOT] == HOLDS and row["margin"] == pytest.approx(0.05 * 0.42)
    assert row["high"] == pytest.approx(non_inferior(r56, r20).high + 0.021) and non_inferior(r56, r20).high < 0
    lines = "\n".join(claims_markdown(table.reset_index()))
    assert f"| {0.41:.3g} [{expected.low:.3g}, {expected.high:.3g}] | **holds** |" in lines
    assert f"(margin {0.021:.3g}) | **holds** |" in lines


def test_a_wide_spread_makes_no_claim_hold_and_an_interval_on_the_other_side_does_not_hold():
    # residual-8 against residual-20 as measured on MNIST: 1.467 ± 0.049 and 1.653 ± 0.36, two seeds each
    r8, r20 = [1.467 - 0.0346, 1.467 + 0.0346], [1.653 - 0.2546, 1.653 + 0.2546]
    p8, p20 = [0.90, 0.92], [0.50, 0.52]  # the deeper plain net trains better: the claim's other side
    verdict, table = depth_study({**seeds("r", 8, *r8), **seeds("r", 20, *r20), **seeds("p", 8, *p8),
                                  **seeds("p", 20, *p20)})
    row = table.loc[RESIDUAL_DOES_NOT]
    assert verdict[RESIDUAL_DOES_NOT] == INCONCLUSIVE
    interval = non_inferior(r20, r8)
    assert interval.low < 0 < interval.high
    assert (row["low"], row["high"]) == (pytest.approx(interval.low + row["margin"]),
                                         pytest.approx(interval.high + row["margin"]))
    assert row["why"].endswith(f"tells only a difference beyond {(interval.high - interval.low) / 2:.3g}")
    assert welch(p20, p8).high < 0 and verdict[PLAIN_DEGRADES] == DOES_NOT_HOLD


def _explodes(ratios):
    names = [f"p56s{i}" for i in range(len(ratios))]
    runs = pd.DataFrame([run(n, 56, False, int(n[-1])) for n in names])
    flow = pd.DataFrame({"run_id": names, "ratio_start": ratios})
    table = verdicts(measures(pd.concat([history(n, flat(1.0)) for n in names]), runs, EMPTY_LAYERS, flow),
                     swept(runs), STUDIES).set_index("claim")
    return table.loc["With BatchNorm, the gradient explodes toward the input of a deep plain net instead"]


def test_a_claim_against_a_constant_takes_the_one_sample_interval_of_the_log_ratio():
    ratios = [0.80, 0.83, 0.86]
    explodes = _explodes(ratios)
    expected = stats.ttest_1samp(np.log10(ratios), 1.0).confidence_interval(0.95)
    assert explodes["verdict"] == DOES_NOT_HOLD
    assert (explodes["low"], explodes["high"]) == (pytest.approx(expected.low - 1), pytest.approx(expected.high - 1))


def test_ratios_spread_over_orders_of_magnitude_are_judged_on_their_log():
    """Plain-56 with BatchNorm at initialisation, three seeds on the CIFAR-10 copy: each ratio far
    above 10, which an arithmetic t interval (ruled by the largest) could not tell."""
    ratios = [754.2, 1816.5, 3360.7]
    assert stats.ttest_1samp(ratios, 10.0).confidence_interval(0.95).low < 0  # on the ratios: inconclusive
    explodes = _explodes(ratios)
    expected = stats.ttest_1samp(np.log10(ratios), 1.0).confidence_interval(0.95)
    assert explodes["verdict"] == HOLDS and expected.low > 0
    assert explodes["low"] == pytest.approx(expected.low - 1)
    assert explodes["a"].startswith(f"plain, depth=56, BatchNorm: {np.mean(np.log10(ratios)):.3g} ± ")


def test_an_inconclusive_claim_against_a_constant_counts_only_the_runs():
    ratios = [3.0, 40.0, 800.0]  # log10 0.48 to 2.9 about the threshold 1: inconclusive
    explodes = _explodes(ratios)
    half_width = (explodes["high"] - explodes["low"]) / 2
    assert explodes["verdict"] == INCONCLUSIVE
    assert explodes["why"].endswith(f"n=3 tells only a difference beyond {half_width:.3g}")


def test_one_seed_is_not_enough_and_an_unconverged_run_is_named():
    verdict, table = depth_study({"p20s0": 0.9, "p56s0": 0.5, "r20s0": 0.4, "r56s0": 0.41})
    assert set(verdict.index) == {PLAIN_DEGRADES, RESIDUAL_DOES_NOT, RESIDUAL_HELPS}
    assert (verdict == ONE_RUN).all()
    # never silent about a point estimate on the wrong side
    assert table.loc[PLAIN_DEGRADES, "why"].startswith(
        f"the arms' difference {0.5 - 0.9:.3g} is on the other side, with one run in each arm")
    assert table.loc[RESIDUAL_HELPS, "why"].startswith(f"the arms' difference {0.5 - 0.41:.3g} is on the claimed side")

    verdict, table = depth_study({"p20s0": 0.5, "p20s1": 0.52, "p56s0": 0.9, "p56s1": 0.94,
                                  "r20s0": 0.4, "r20s1": 0.4, "r56s0": falling(2.0), "r56s1": 0.4})
    assert verdict[PLAIN_DEGRADES] == HOLDS  # r56s0 is not in this comparison
    assert verdict[RESIDUAL_DOES_NOT] == TOO_SHORT and verdict[RESIDUAL_HELPS] == TOO_SHORT
    assert table.loc[RESIDUAL_HELPS, "why"].startswith("not converged: r56s0 (loss changed ")


def test_failed_and_diverged_runs_are_left_out_and_named():
    losses = {"p20s0": 0.5, "p20s1": 0.52, "p56s0": 0.9, "p56s1": 0.94, "p56s2": 0.9,
              "r20s0": 0.4, "r20s1": 0.44, "r56s0": 0.43, "r56s1": 0.41}
    verdict, table = depth_study(losses, p56s2={"diverged": True, "test_acc": np.nan})
    assert verdict[PLAIN_DEGRADES] == HOLDS
    assert table.loc[PLAIN_DEGRADES, "why"].endswith("left out: p56s2 (diverged)")
    assert "(n=2)" in table.loc[PLAIN_DEGRADES, "a"]

    verdict, table = depth_study({"p20s0": 0.5, "p56s0": 0.9, "r20s0": 0.4, "r56s0": 0.4},
                                 p56s0={"status": "FAILED"})
    assert verdict[PLAIN_DEGRADES] == NO_RUN
    assert table.loc[PLAIN_DEGRADES, "why"] == "no usable run in an arm: p56s0 (failed)"


def test_claims_the_runs_cannot_speak_to_are_left_out():
    verdict, _ = depth_study({"r20s0": 0.4, "r20s1": 0.4, "r56s0": 0.4, "r56s1": 0.4})  # no plain nets
    assert list(verdict.index) == [RESIDUAL_DOES_NOT]


def test_a_claim_about_the_initialisation_counts_a_run_that_diverged_later():
    """The step-0 gradient was measured before the run diverged: it still counts."""
    names = ["p56s0", "p56s1", "r56s0", "r56s1"]
    runs = pd.DataFrame([run(n, 56, n[0] == "r", int(n[-1]), diverged=n == "r56s1") for n in names])
    flow = pd.DataFrame({"run_id": names, "ratio_start": [1e3, 2e3, 0.9, 1.1]})
    table = verdicts(measures(pd.concat([history(n, flat(1.0)) for n in names]), runs, EMPTY_LAYERS, flow),
                     swept(runs), STUDIES).set_index("claim")
    reach = "Residual connections let the gradient reach the first layers"
    assert table.loc[reach, "verdict"] == HOLDS and "(n=2)" in table.loc[reach, "b"]


def test_an_invariance_score_of_a_net_at_chance_is_no_evidence():
    """A constant classifier on a stratified sample of 10 classes scores accuracy 0.1 and shift
    consistency 1.0: it is left out of the invariance claims, named. Chance + 2 standard errors
    on 500 images is 0.1 + 2 sqrt(0.09 / 500) = 0.127."""
    names = {"constant": (0.1, 1.0), "barely": (0.126, 0.95), "learnt": (0.128, 0.7), "learnt2": (0.6, 0.72)}
    rows, points = [], []
    for seed, (name, (accuracy, consistency)) in enumerate(names.items()):
        rows.append({"run_id": name, "run_name": name, "status": "FINISHED", "diverged": False, "job_num": seed,
                     "param.model.depth": 20, "param.model.residual": True, "param.model.batchnorm": True,
                     "param.trainer.seed": seed, "tag.choice.augment": "none", "tag.classes": "10",
                     "param.probes.shift.max": 2, "param.probes.shift.images": 500,
                     "metric.test/acc": accuracy, "metric.test/shift_consistency": consistency})
        points.append(pd.DataFrame([(name, "test/acc_at_shift", dx, accuracy) for dx in range(5)],
                                   columns=["run_id", "key", "step", "value"]))
        points.append(history(name, flat(1.0)))
    runs = pd.DataFrame(rows)
    measured = measures(pd.concat(points), runs, EMPTY_LAYERS)
    assert list(measured.set_index("run_id")["at_chance"]) == [True, True, False, False]
    table = verdicts(measured, swept(runs), STUDIES).set_index("claim")
    row = table.loc['Trained CNNs are only "sort of" shift-invariant']
    assert row["b"].endswith("(n=2)") and row["why"].endswith("left out: constant (at chance), barely (at chance)")
    # with the shift probe off, the identity point of another family's curve tells the same
    rotation_only = history("r", flat(1.0)).assign(run_id="rotation")
    rotation_only = pd.concat([rotation_only, pd.DataFrame([("rotation", "test/acc_at_rotation", k, 0.1 if k == 3 else 0.0)
                                                            for k in range(7)], columns=rotation_only.columns)])
    alone = runs.iloc[:1].assign(run_id="rotation", **{"param.probes.shift.max": 0, "param.probes.shift.images": 500})
    assert measures(rotation_only, alone, EMPTY_LAYERS)["at_chance"].tolist() == [True]
    from analysis.figures.common import chance_note  # and the invariance figures' captions name them
    assert chance_note(pd.concat(points), runs) == (" Left out of the scores, at chance on the scored sample (a net at "
                                                    "chance is perfectly invariant): constant, barely.")
    from analysis.figures.common import above_chance  # and their bars leave them out, as the claims do
    assert list(above_chance(pd.concat(points), runs)["run_id"]) == ["learnt", "learnt2"]


def test_a_net_at_chance_is_no_evidence_of_a_smooth_landscape_or_a_narrow_gap():
    """Plain-20 without BatchNorm at lr 0.1 on the CIFAR-10 copy (trainer=cpu56) never left chance:
    training loss 2.30, test accuracy 0.1, loss variation 0.0013 against BatchNorm's 0.079. Its
    flat plateau is no landscape claim's evidence, nor its zero generalisation gap; its
    loss still counts for "BatchNorm makes training faster"."""
    rows, points = [], []
    for seed, (bn, accuracy, variation) in enumerate([(False, 0.1, 0.0013), (False, 0.1, 0.0011), (False, 0.1, 0.0016),
                                                       (True, 0.55, 0.079), (True, 0.56, 0.072), (True, 0.54, 0.085)]):
        name = f"{'bn' if bn else 'nobn'} plain s{seed % 3}"
        rows.append({"run_id": name, "run_name": name, "status": "FINISHED", "diverged": False, "job_num": seed,
                     "param.model.depth": 20, "param.model.residual": False, "param.model.batchnorm": bn,
                     "param.trainer.seed": seed % 3, "tag.choice.augment": "none", "tag.classes": "10",
                     "param.probes.shift.max": 2, "param.probes.shift.images": 500, "metric.test/acc": accuracy})
        points += [pd.DataFrame([(name, "test/acc_at_shift", dx, accuracy) for dx in range(5)] +
                                [(name, "train/landscape_loss_variation", step, variation) for step in (10, 20)],
                                columns=["run_id", "key", "step", "value"]),
                   history(name, flat(2.3 if not bn else 1.3 + 0.01 * seed))]
    runs = pd.DataFrame(rows)
    measured = measures(pd.concat(points), runs, EMPTY_LAYERS)
    assert measured["at_chance"].tolist() == [True] * 3 + [False] * 3
    table = verdicts(measured, swept(runs), STUDIES).set_index("claim")
    smooth = table.loc["BatchNorm smooths the loss landscape (Santurkar et al. 2018)"]
    assert smooth["verdict"] == NO_RUN and "nobn plain s0 (at chance)" in smooth["why"]
    assert table.loc["BatchNorm makes training faster", "verdict"] == HOLDS


def test_the_caption_and_the_claims_table_read_the_same_quantity():
    """Plain-20's last logged loss is below plain-8's, its mean over the last 10% of steps
    above: the caption of figure 1 and the claims table must tell the same order."""
    from analysis.figures.curves import training_curves

    levels = {"p8s0": [1.0] * 18 + [1.00, 1.00], "p8s1": [1.0] * 18 + [1.02, 1.02],
              "p20s0": [1.3] * 18 + [1.30, 0.90], "p20s1": [1.3] * 18 + [1.32, 0.92]}
    verdict, table = depth_study(levels)
    window = {name: np.mean(loss[-2:]) for name, loss in levels.items()}  # steps 190 and 200 of 200
    ratio = (window["p20s0"] + window["p20s1"]) / (window["p8s0"] + window["p8s1"])
    assert ratio > 1 and levels["p20s0"][-1] < levels["p8s0"][-1]  # the two readings disagree in order
    mean8, mean20 = np.mean([window["p8s0"], window["p8s1"]]), np.mean([window["p20s0"], window["p20s1"]])
    assert table.loc[PLAIN_DEGRADES, "a"].startswith(f"plain, depth=20: {mean20:.3g} ±")
    assert table.loc[PLAIN_DEGRADES, "b"].startswith(f"plain, depth=8: {mean8:.3g} ±")
    rows = [run(name, int(name[1:].split("s")[0]), False, int(name[-1])) for name in levels]
    histories = pd.concat([history(name, loss) for name, loss in levels.items()])
    figure, finding = training_curves(histories, pd.DataFrame(rows), EMPTY_LAYERS)
    assert f"depth 20's mean training loss over the last 10% of steps is {ratio:#.3g}x depth 8's" in finding


def test_the_margin_counts_the_spread_of_the_arm_it_is_a_fraction_of():
    """Residual-20's mean is measured, not known: the claim holds only where residual-56 lies
    below 1.05 times it by Welch's interval. Here the interval of a - b alone would lie under
    the margin (it would hold); the one that counts b's spread (1.05 times) does not."""
    r56, r20 = [0.9937, 0.9723, 0.9937, 0.9288, 0.9948], [0.9771, 1.0053]
    verdict, table = depth_study({**seeds("r", 20, *r20), **seeds("r", 56, *r56)})
    row, margin = table.loc[RESIDUAL_DOES_NOT], 0.05 * np.mean(r20)
    assert welch(r56, r20).high < margin < non_inferior(r56, r20).high + margin
    assert row["high"] == pytest.approx(non_inferior(r56, r20).high + margin)
    assert row["difference"] == pytest.approx(np.mean(r56) - np.mean(r20))
    assert verdict[RESIDUAL_DOES_NOT] == INCONCLUSIVE


def test_one_run_in_one_arm_is_named_as_such():
    verdict, table = depth_study({**seeds("p", 20, 0.5, 0.52, 0.51), "p56s0": 0.9})
    assert verdict[PLAIN_DEGRADES] == ONE_RUN == "inconclusive (one run in an arm)"
    assert table.loc[PLAIN_DEGRADES, "why"].startswith(f"the arms' difference {0.9 - 0.51:.3g} is on the claimed "
                                                       "side, with one run in an arm to judge it by")


def test_a_bound_and_its_margin_never_print_alike_unless_they_are():
    from analysis.claims import interval_text

    row = {"difference": 0.0185, "low": 0.016, "high": 0.0210004, "margin": 0.021, "relation": "<="}
    assert interval_text(row) == "0.0185 [0.016, 0.0210004] (margin 0.021)"  # above the margin: it does not hold
    assert interval_text({**row, "high": 0.021}) == "0.0185 [0.016, 0.021] (margin 0.021)"
    assert interval_text({**row, "high": 0.0200004}) == "0.0185 [0.016, 0.02] (margin 0.021)"


def test_without_the_sample_size_a_net_at_or_below_chance_is_at_chance():
    base = {"run_name": "x", "status": "FINISHED", "diverged": False, "job_num": 0, "param.model.depth": 20,
            "param.model.residual": True, "param.model.batchnorm": True, "param.trainer.seed": 0,
            "tag.classes": "10", "param.probes.shift.max": 2}
    accuracies = {"below": 0.0, "at": 0.1, "above": 0.11, "small_test_set": 0.19}
    rows = [{**base, "run_id": name, "run_name": name} for name in accuracies]
    rows[-1].update({"param.probes.shift.images": 500, "param.data.test_size": 40})  # 0.1 + 2 sqrt(.09 / 40) = 0.195
    points = pd.DataFrame([(name, "test/acc_at_shift", 2, accuracy) for name, accuracy in accuracies.items()],
                          columns=["run_id", "key", "step", "value"])
    from analysis.claims import at_chance
    assert at_chance(pd.DataFrame(rows), points).tolist() == [True, True, False, True]


def test_an_lr_logged_apart_from_the_loss_still_counts_training_in_lr_spent():
    """The annealed run of the test above, its lr logged one step before each loss point, and
    missing at the last: the lr in force is the one logged last."""
    steps = np.arange(10, 201, 10)
    lr = 0.1 * 0.5 * (1 + np.cos(np.pi * steps / 200))
    spent = np.cumsum(lr * 10)
    loss = 2.3 * (1 - 0.6 * spent / spent[-1])
    rows = [("offset", "train/loss", int(s), value) for s, value in zip(steps, loss)]
    rows += [("offset", "train/lr", int(s) - 1, value) for s, value in zip(steps[:-1], lr[:-1])]
    table = convergence(pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])).set_index("run_id")
    assert not table.loc["offset", "converged"] and table.loc["offset", "loss_change"] > CONVERGED_CHANGE


def test_an_invariance_figure_leaves_a_net_at_chance_out_of_its_bars():
    """Without augmentation, one net at chance (consistency 1.0) and one that learnt (0.6); with
    crops, two that learnt (0.8, 0.82). The caption reads the bars: 0.600 without augmentation."""
    from analysis.figures.invariance import shift_invariance

    nets = {"none0": ("none", 0.1, 1.0), "none1": ("none", 0.6, 0.6), "crop0": ("crop", 0.6, 0.8),
            "crop1": ("crop", 0.6, 0.82)}
    rows, points = [], []
    for seed, (name, (augment, accuracy, consistency)) in enumerate(nets.items()):
        rows.append({**run(name, 20, True, seed % 2), "tag.choice.augment": augment, "tag.classes": "10",
                     "param.probes.shift.max": 2, "param.probes.shift.images": 500,
                     "metric.test/shift_consistency": consistency, "metric.test/shift_instability_1px": 0.1})
        points.append(pd.DataFrame([(name, "test/acc_at_shift", dx, accuracy) for dx in range(5)],
                                   columns=["run_id", "key", "step", "value"]))
    figure, finding = shift_invariance(pd.concat(points), pd.DataFrame(rows), EMPTY_LAYERS)
    assert finding.startswith("Shift consistency from 0.600 (none) to 0.810 (crop).")
    assert finding.endswith("perfectly invariant): none0.")
    heights = sorted(round(bar.get_height(), 3) for bar in figure.axes[0].patches if bar.get_height() > 0)
    assert 1.0 not in heights and 0.6 in heights


def test_the_results_page_notes_a_verdict_against_the_literature():
    from analysis.results import _literature
    from analysis.studies import STUDIES

    class Params:  # an MLflow run as far as the note reads it
        class data:
            params = {"trainer.steps": "None", "trainer.epochs": "15", "data.train_subset": "10000"}

    rows = pd.DataFrame([{"claim": PLAIN_DEGRADES, "verdict": DOES_NOT_HOLD}, {"claim": RESIDUAL_HELPS, "verdict": HOLDS}])
    lines = _literature(STUDIES[0], rows, [Params])
    assert lines[0].startswith("Literature: He et al. 2016") and len(lines) == 3
    assert lines[1].startswith(f"- **Disagrees with the literature**: *{PLAIN_DEGRADES}* does not hold here")
    assert "these runs trained 15 epochs of 10000 images" in lines[1]


def test_a_comparison_that_settled_is_judged_though_its_runs_still_learn():
    """Every run's loss still falls 3% a point (none converged), but plain-56 sits above plain-20
    at 50%, 75% and 100% of training by Welch's interval each time: the verdict stands, and the
    runs are named. Where the order flips late, the verdict moved: budget too short."""
    p20 = {f"p20s{s}": falling(1.0 + 0.01 * s) for s in range(3)}
    p56 = {f"p56s{s}": falling(1.5 + 0.01 * s) for s in range(3)}
    verdict, table = depth_study({**p20, **p56})
    assert verdict[PLAIN_DEGRADES] == HOLDS
    why = table.loc[PLAIN_DEGRADES, "why"]
    assert why.startswith("the 95% interval lies on the claimed side; not converged: p56s0 (loss changed ")
    assert why.endswith("but the verdict was the same at 50% and 75% of training (the comparison has settled)")
    # the windows the earlier verdicts read: steps 81-100 and 131-150 of 200
    measured = measures(pd.concat([history(n, l) for n, l in {**p20, **p56}.items()]),
                        pd.DataFrame([run(n, int(n[1:3]), False, int(n[-1])) for n in {**p20, **p56}]), EMPTY_LAYERS)
    at_half = measured.set_index("run_id")["final training loss at 50%"]
    assert at_half["p56s0"] == pytest.approx(np.mean(falling(1.5)[8:10]))

    crossing = {name: loss[:15] + [loss[14] * 0.5] * 5 if name.startswith("p56") else loss  # p56 drops below late
                for name, loss in {**p20, **p56}.items()}
    verdict, table = depth_study(crossing)
    assert verdict[PLAIN_DEGRADES] == TOO_SHORT
    assert "the verdict moved: holds at 50% and 75% of training, does not hold at the end" in table.loc[PLAIN_DEGRADES, "why"]


def test_a_comparison_that_has_not_settled_says_what_each_reading_gave_and_shows_the_end_interval():
    """As residual-56 against residual-8 at trainer=cpu56: level at half of training, apart
    later. Budget too short, with the interval at the end beside it and the earlier verdicts."""
    p20 = {f"p20s{s}": falling(1.0 + 0.01 * s) for s in range(3)}
    p56 = {f"p56s{s}": [loss * (1 + 0.05 * max(0, i - 9)) for i, loss in enumerate(falling(1.005 + 0.01 * s))]
           for s in range(3)}
    verdict, table = depth_study({**p20, **p56})
    assert verdict[PLAIN_DEGRADES] == TOO_SHORT
    row = table.loc[PLAIN_DEGRADES]
    assert row["why"].endswith("the comparison has not settled: inconclusive at 50%, holds at 75% of training, "
                               "holds at the end")
    expected = welch([np.mean(loss[18:20]) for loss in p56.values()], [np.mean(loss[18:20]) for loss in p20.values()])
    assert (row["low"], row["high"]) == (pytest.approx(expected.low), pytest.approx(expected.high))


def augmentation_study(val_consistency: dict, passes=(70, 140, 200), val_acc=None):
    """Three seeds per arm (augment none, crop), every run's loss still falling (none converged),
    validation passes at `passes` of 200 steps scoring shift consistency on 50 images;
    val_consistency: {arm: its value at each pass, the last also the test-set score}."""
    rows, points = [], []
    for arm, values in val_consistency.items():
        for seed in range(3):
            name = f"{arm} s{seed}"
            rows.append({**run(name, 20, True, seed), "tag.choice.augment": arm, "tag.classes": "10",
                         "param.probes.shift.max": 2, "param.probes.shift.images": 500,
                         "param.probes.shift.val_images": 50, "param.data.val_size": 0.1,
                         "metric.test/shift_consistency": values[-1] + 0.01 * seed})
            accuracy = (val_acc or {}).get(name, [0.5] * len(passes))
            points += [history(name, falling(2.0)),
                       pd.DataFrame([(name, "test/acc_at_shift", dx, 0.6) for dx in range(5)] +
                                    [(name, "val/acc", step, acc) for step, acc in zip(passes, accuracy)] +
                                    [(name, "val/shift_consistency", step, value + 0.01 * seed)
                                     for step, value in zip(passes, values)],
                                    columns=["run_id", "key", "step", "value"])]
    runs = pd.DataFrame(rows)
    measured = measures(pd.concat(points), runs, EMPTY_LAYERS)
    table = verdicts(measured, swept(runs), STUDIES).set_index("claim")
    return measured.set_index("run_id"), table.loc["Training with random crops makes a CNN more shift-invariant"]


def test_a_score_claim_settles_on_the_validation_passes_before_50_and_75_percent():
    """The loss of every run still falls 3% a point, so the score's verdict at the end alone is
    budget too short; crop scores above none at the passes by 50% (step 70) and 75% (step 140)
    of 200 steps as at the end: settled. A late crossing, a net at chance at a pass (accuracy
    0.1 on 50 images: chance + 2 sqrt(0.09 / 50) = 0.185) and one pass read for both points
    are not."""
    measured, row = augmentation_study({"crop": [0.80, 0.82, 0.85], "none": [0.70, 0.71, 0.72]})
    assert row["verdict"] == HOLDS, row["why"]
    assert row["why"].endswith("but the verdict was the same at the validation passes by 50% and 75% of training "
                               "(the comparison has settled)")
    expected = welch([0.85, 0.86, 0.87], [0.72, 0.73, 0.74])
    assert (row["low"], row["high"]) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert measured.loc["crop s1", "shift consistency at 50%"] == pytest.approx(0.81)  # the pass at step 70
    assert measured.loc["crop s1", "shift consistency at 75%"] == pytest.approx(0.83)  # step 140
    # the gap there: training accuracy over steps 51-70 (0.9) minus the pass's validation accuracy
    assert measured.loc["crop s1", "generalisation gap at 50%"] == pytest.approx(0.9 - 0.5)

    _, row = augmentation_study({"crop": [0.60, 0.82, 0.85], "none": [0.70, 0.71, 0.72]})
    assert row["verdict"] == TOO_SHORT
    assert row["why"].endswith("the comparison has not settled: does not hold at 50%, holds at 75% of training "
                               "(validation passes), holds at the end")

    chance = {"none s1": [0.1, 0.5, 0.5]}
    measured, row = augmentation_study({"crop": [0.80, 0.82, 0.85], "none": [0.70, 0.71, 0.72]}, val_acc=chance)
    assert np.isnan(measured.loc["none s1", "shift consistency at 50%"])
    assert row["verdict"] == TOO_SHORT and "settled" not in row["why"]

    _, row = augmentation_study({"crop": [0.80, 0.85], "none": [0.70, 0.72]}, passes=(70, 200))
    assert row["verdict"] == TOO_SHORT and "settled" not in row["why"]  # both points would read step 70
