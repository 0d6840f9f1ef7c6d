"""Verdicts on the lecture claims, on constructed runs whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from analysis.claims import (CONVERGED_CHANGE, DOES_NOT_HOLD, HOLDS, TOO_FEW, TOO_SHORT, convergence, measures,
                             verdicts)
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
RESIDUAL_DOES_NOT = "Residual nets do not degrade with depth"
RESIDUAL_HELPS = "At the greatest depth, residual connections make the net train better"


def test_verdicts_follow_the_two_spreads_rule():
    verdict, table = depth_study({"p20s0": 0.50, "p20s1": 0.52, "p56s0": 0.90, "p56s1": 0.94,  # far apart
                                  "r20s0": 0.40, "r20s1": 0.44, "r56s0": 0.43, "r56s1": 0.41})  # within spread
    assert verdict[PLAIN_DEGRADES] == HOLDS
    assert verdict[RESIDUAL_DOES_NOT] == HOLDS
    assert verdict[RESIDUAL_HELPS] == HOLDS
    row = table.loc[PLAIN_DEGRADES]
    assert row["a"] == f"plain, depth=56: 0.92 ± {np.std([0.90, 0.94], ddof=1):.2g} (n=2)"
    assert row["b"].startswith("plain, depth=20: 0.51 ±")
    assert row["why"].startswith(f"difference {0.92 - 0.51:.3g}, spread {np.std([0.90, 0.94], ddof=1):.2g}")

    # the same means, with a spread across seeds larger than half the difference: no longer shown
    verdict, _ = depth_study({"p20s0": 0.30, "p20s1": 0.72, "p56s0": 0.50, "p56s1": 1.34,
                              "r20s0": 0.40, "r20s1": 0.44, "r56s0": 0.80, "r56s1": 0.84})
    assert verdict[PLAIN_DEGRADES] == DOES_NOT_HOLD
    assert verdict[RESIDUAL_DOES_NOT] == DOES_NOT_HOLD  # residual-56 is 0.4 worse, spread 0.03


def test_one_seed_is_not_enough_and_an_unconverged_run_is_named():
    verdict, _ = depth_study({"p20s0": 0.5, "p56s0": 0.9, "r20s0": 0.4, "r56s0": 0.41})
    assert set(verdict.index) == {PLAIN_DEGRADES, RESIDUAL_DOES_NOT, RESIDUAL_HELPS}
    assert (verdict == TOO_FEW).all()

    verdict, table = depth_study({"p20s0": 0.5, "p20s1": 0.5, "p56s0": 0.9, "p56s1": 0.9,
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
    assert verdict[PLAIN_DEGRADES] == TOO_FEW
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
