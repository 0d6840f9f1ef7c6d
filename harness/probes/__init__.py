"""Measurements taken during training, each hooked in at a named point of the loop:

- after_backward / after_step: per-layer gradient norms, weight norms, update ratios
  (grad_norms.py) and, when due, the loss-landscape probe (landscape.py);
- evaluate: invariance scores, to shifts (shift.py) and to rotation, scale and illumination
  (invariance.py), on a fixed, class-stratified sample of a split.
Every value is a device tensor; the metric buffer reads them at its next flush.
"""

import csv
import io
from contextlib import nullcontext

from harness import contract
from harness.probes.grad_norms import GradNorms
from harness.probes.landscape import landscape_probe
from harness.probes.invariance import Family, family_scores, grid, stratified_sample
from harness.probes.shift import shift_scores


class Probes:
    def __init__(self, cfg_probes, model, example, num_classes: int):
        """example: a normalised input batch, to find the layers in forward order."""
        self.cfg = cfg_probes
        self.model, self.num_classes = model, num_classes
        self.grad_norms = GradNorms(model, example, cfg_probes.grad_every, cfg_probes.grad_dense)
        self.curves = {}  # "shift" or a family: test accuracy at each point of its grid
        self.samples = {}  # split: (indices, labels) of the images its invariance scores are over

    def after_backward(self, step: int, loss_fn, lr: float) -> dict:
        """Right after loss.backward() of the step with 0-based index `step`."""
        metrics = self.grad_norms.after_backward(step)
        every = self.cfg.landscape.every
        if every and step % every == 0:
            metrics.update(landscape_probe(self.model, loss_fn, [m * lr for m in self.cfg.landscape.etas]))
        return metrics

    def after_step(self, step: int) -> dict:
        return self.grad_norms.after_step(step)

    def plan(self, split: str, available: int) -> str | None:
        """What evaluate(split) will do on a split of `available` images, for the progress line;
        None if nothing."""
        shift, families = self.cfg.shift, self.cfg.invariance.families
        size = min(shift.images if split == "test" else shift.val_images, available)  # as stratified_sample
        passes = [f"{(2 * shift.max + 1) ** 2} shifts"] if shift.max else []
        passes += [f"{len(grid(f, self.cfg.invariance))} {Family(f).value}s" for f in families]
        if not size or not passes:
            return None
        return f"invariance scores on {size:,} {'test' if split == 'test' else 'validation'} images ({' + '.join(passes)} each)"

    def evaluate(self, split: str, step: int, x, y, normalise, batch_size: int, autocast=nullcontext) -> dict:
        """Invariance metrics of the model on the split's sample: shift.images of the test split,
        shift.val_images of the validation split, the same images at every evaluation."""
        shift, families = self.cfg.shift, self.cfg.invariance.families
        size = shift.images if split == "test" else shift.val_images
        if not size or not (shift.max or families):
            return {}
        if split not in self.samples:
            indices = stratified_sample(y, size, shift.seed).to(x.device)
            self.samples[split] = (indices, y[indices])
        indices, labels = self.samples[split]
        images, scores, curves = x[indices], {}, {}
        if shift.max:
            scores, curves["shift"] = shift_scores(self.model, images, labels, normalise, shift.max, shift.mode,
                                                   batch_size, autocast)
        for family in families:
            family_metrics, curves[family.value] = family_scores(
                self.model, family, self.cfg.invariance, images, labels, normalise, batch_size, self.num_classes,
                autocast)
            scores.update(family_metrics)
        if split == "test":
            self.curves = curves
        return {f"{split}/{name}": value for name, value in scores.items()}

    def curve_metrics(self) -> list:
        """[(step, {metric: accuracy})]: after the test evaluation, accuracy at each point of each
        grid: shift/acc_dx at step dx + max, <family>/acc_at at the point's index."""
        points = []
        for name, accuracy_at in self.curves.items():
            key = contract.SHIFT_ACC_DX if name == "shift" else name + contract.FAMILY_ACC
            points += [(i, {key: accuracy_at[i]}) for i in range(len(accuracy_at))]
        return points

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
        if "shift" not in self.curves:
            return None
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["split", "dx", "accuracy"])
        for i, accuracy in enumerate(self.curves["shift"].tolist()):
            writer.writerow(["test", i - self.cfg.shift.max, f"{accuracy:.6f}"])
        return out.getvalue()

    def invariance_table(self) -> str | None:
        """CSV of test accuracy at each point of each transform family's grid, or None."""
        families = [f for f in self.curves if f != "shift"]
        if not families:
            return None
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["family", "point", "parameters", "accuracy"])
        for family in families:
            for i, (params, accuracy) in enumerate(zip(grid(family, self.cfg.invariance), self.curves[family].tolist())):
                writer.writerow([family, i, " ".join(f"{v:g}" for v in params), f"{accuracy:.6f}"])
        return out.getvalue()

