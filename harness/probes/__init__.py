"""Measurements taken during training, each hooked in at a named point of the loop:

- after_backward / after_step: per-layer gradient norms, weight norms, update ratios
  (grad_norms.py) and, when due, the loss-landscape probe (landscape.py);
- evaluate: shift-invariance scores on a split (shift.py).
Every value is a device tensor; the metric buffer reads them at its next flush.
"""

import csv
import io
from contextlib import nullcontext

from harness import contract
from harness.probes.grad_norms import GradNorms
from harness.probes.landscape import landscape_probe
from harness.probes.shift import shift_scores


class Probes:
    def __init__(self, cfg_probes, model, example):
        """example: a normalised input batch, to find the layers in forward order."""
        self.cfg = cfg_probes
        self.model = model
        self.grad_norms = GradNorms(model, example, cfg_probes.grad_every, cfg_probes.grad_dense)
        self.shift_curves = []  # (split, step, accuracy per dx) for the CSV artifact

    def after_backward(self, step: int, loss_fn, lr: float) -> dict:
        """Right after loss.backward() of the step with 0-based index `step`."""
        metrics = self.grad_norms.after_backward(step)
        every = self.cfg.landscape.every
        if every and step % every == 0:
            metrics.update(landscape_probe(self.model, loss_fn, [m * lr for m in self.cfg.landscape.etas]))
        return metrics

    def after_step(self, step: int) -> dict:
        return self.grad_norms.after_step(step)

    def evaluate(self, split: str, step: int, x, y, normalise, batch_size: int, autocast=nullcontext) -> dict:
        """Shift-invariance metrics of the model on (the first probes.shift.images of) a split;
        the accuracy-per-shift curve only for the test split, where it is logged."""
        shift = self.cfg.shift
        if not shift.images or not shift.max:
            return {}
        n = min(len(x), shift.images)
        scores, accuracy_at = shift_scores(self.model, x[:n], y[:n], normalise, shift.max, shift.mode,
                                           batch_size, shift.seed, autocast, curve=split == "test")
        if accuracy_at is not None:
            self.shift_curves.append((split, step, accuracy_at))
        return {f"{split}/{name}": value for name, value in scores.items()}

    def shift_curve_metrics(self) -> list:
        """[(step = dx + max, {"shift/acc_dx": accuracy})] of the test evaluation."""
        if not self.shift_curves:
            return []
        _, _, accuracy_at = self.shift_curves[-1]
        return [(i, {contract.SHIFT_ACC_DX: accuracy_at[i]}) for i in range(len(accuracy_at))]

    def layer_table(self) -> str:
        return self.grad_norms.layer_table()

    def shift_table(self) -> str | None:
        """CSV of test accuracy per horizontal shift, or None if it was not measured."""
        if not self.shift_curves:
            return None
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["split", "step", "dx", "accuracy"])
        for split, step, accuracy_at in self.shift_curves:
            for i, accuracy in enumerate(accuracy_at.tolist()):
                writer.writerow([split, step, i - self.cfg.shift.max, f"{accuracy:.6f}"])
        return out.getvalue()

