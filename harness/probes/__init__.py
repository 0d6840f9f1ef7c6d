"""Measurements taken during training, each hooked in at a named point of the loop:

- after_backward / after_step: per-layer gradient norms, weight norms, update ratios
  (grad_norms.py) and, when due, the loss-landscape probe (landscape.py);
- evaluate: shift-invariance scores on a fixed, class-stratified sample of a split (shift.py).
Every value is a device tensor; the metric buffer reads them at its next flush.
"""

import csv
import io
from contextlib import nullcontext

from harness import contract
from harness.probes.grad_norms import GradNorms
from harness.probes.landscape import landscape_probe
from harness.probes.shift import shift_scores, stratified_sample


class Probes:
    def __init__(self, cfg_probes, model, example):
        """example: a normalised input batch, to find the layers in forward order."""
        self.cfg = cfg_probes
        self.model = model
        self.grad_norms = GradNorms(model, example, cfg_probes.grad_every, cfg_probes.grad_dense)
        self.shift_curves = []  # (split, step, accuracy per dx) for the CSV artifact
        self.samples = {}  # split: (indices, labels) of the images its shift scores are over

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
        """Shift-invariance metrics of the model on the split's sample: shift.images of the test
        split, shift.val_images of the validation split, the same images at every evaluation."""
        shift = self.cfg.shift
        size = shift.images if split == "test" else shift.val_images
        if not size or not shift.max:
            return {}
        if split not in self.samples:
            indices = stratified_sample(y, size, shift.seed).to(x.device)
            self.samples[split] = (indices, y[indices])
        indices, labels = self.samples[split]
        scores, accuracy_at = shift_scores(self.model, x[indices], labels, normalise, shift.max, shift.mode,
                                           batch_size, autocast)
        if split == "test":
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

    def sample_table(self) -> str | None:
        """CSV of the images each split's shift scores are over (index into the split, label)."""
        if not self.samples:
            return None
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["split", "index", "label"])
        for split, (indices, labels) in self.samples.items():
            writer.writerows([split, i, label] for i, label in zip(indices.tolist(), labels.tolist()))
        return out.getvalue()

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

