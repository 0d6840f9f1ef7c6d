"""How shift-invariant a trained network is, on a labelled sample of a split.

Every image of the sample is classified once under each of the K = (2 max + 1)^2 shifts
(dy, dx) in [-max, max]^2; every score is then exact over those K predictions:

- consistency (Zhang 2019): the probability that two independent uniform shifts give the
  same class, sum_c (n_c / K)^2 for an image whose K predictions fall n_c in class c, averaged
  over images (with its standard error across images);
- one-pixel instability: P(top-1 changes) under the diagonal shift (1, 1), and the mean
  |change| of the probability of the unshifted top class (Azulay & Weiss 2019);
- accuracy at each horizontal shift (0, dx), dx in [-max, max].
Shifts act on the uint8 images before normalisation: `circular` rolls, `translate` moves
the content and fills the uncovered border with zeros (as crop augmentation pads).
The exact scoring and the stratified sample are invariance.py's, shared with the other
transform families.
"""

import csv
import io
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from harness import contract
from harness.probes.base import Subject
from harness.probes.invariance import Sampled, consistency, plan_line, predictions_under
from harness.training.augment import translate


class ShiftMode(str, Enum):
    circular = "circular"  # roll: content leaving one side enters the other
    translate = "translate"  # move the content, zero-fill the uncovered border


@dataclass
class ShiftProbeConfig:
    _target_: str = MISSING
    max: int = 4
    mode: ShiftMode = ShiftMode.circular
    images: int = 500  # of the test split, scored at the end
    val_images: int = 100  # of the validation split, scored at each validation
    seed: int = 0


ConfigStore.instance().store(group="schema/probes", name="shift", node=ShiftProbeConfig)


FILL = {ShiftMode.circular: "circular", ShiftMode.translate: "zero"}


def shift_grid(max_shift: int) -> list:
    """[(dy, dx)] in row-major order."""
    return [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]


def shift_scores(model, x, y, normalise, max_shift: int, mode, batch_size: int, autocast=nullcontext):
    """({consistency, its standard error, 1-pixel instability, 1-pixel probability change}: 0-d
    tensors, accuracy at each horizontal shift dx = -max ... max: a (2 max + 1,) tensor)."""
    grid = shift_grid(max_shift)
    shifts = torch.tensor(grid, device=x.device)
    fill = FILL[ShiftMode(mode)]
    base, diagonal = grid.index((0, 0)), grid.index((1, 1))
    predictions, softmax = predictions_under(
        model, x, normalise, lambda images, i: translate(images, shifts[i, 0], shifts[i, 1], fill), len(grid),
        batch_size, autocast, keep=(base, diagonal))
    p_base, p_shifted = softmax[base], softmax[diagonal]
    mean, error = consistency(predictions, p_base.shape[1])
    base_class = predictions[:, base]
    changed = predictions[:, diagonal] != base_class
    prob_change = (p_shifted.gather(1, base_class[:, None]) - p_base.gather(1, base_class[:, None])).abs()
    accuracy_at = torch.stack([(predictions[:, grid.index((0, dx))] == y).double().mean()
                               for dx in range(-max_shift, max_shift + 1)])
    scores = {contract.SHIFT_CONSISTENCY: mean, contract.SHIFT_CONSISTENCY_SE: error,
              contract.SHIFT_INSTABILITY: changed.double().mean(), contract.SHIFT_PROB_CHANGE: prob_change.mean()}
    return scores, accuracy_at


class Shift(Sampled):
    """shift_scores on the sample, and test accuracy at each horizontal shift (test/acc_at_shift at
    step dx + max)."""

    def __init__(self, subject: Subject, max: int, mode: ShiftMode, images: int, val_images: int, seed: int):
        super().__init__(subject, images, val_images, seed)
        self.max, self.mode = max, mode
        self.curve = None  # test accuracy at each dx

    @classmethod
    def check(cls, node, image_size):
        from harness.config.rules import at_least, fail  # late: harness.config imports the probes

        at_least(node, "max", 0)
        super().check(node, image_size)
        if image_size and node.max >= image_size:
            fail(node, "max", f"must be smaller than the {image_size}-pixel images")

    def plan(self, split, available):
        size = self.sample_size(split, available)
        if not size or not self.max:
            return None
        return plan_line(split, size, [f"{(2 * self.max + 1) ** 2} shifts"])

    def at_evaluation(self, evaluation):
        images, labels = self.sample(evaluation)
        scores, curve = shift_scores(self.subject.model, images, labels, evaluation.normalise, self.max, self.mode,
                                     evaluation.batch_size, evaluation.autocast)
        if evaluation.split == "test":
            self.curve = curve
            for i in range(len(curve)):
                evaluation.log(i, {contract.SHIFT_ACC_DX: curve[i]})
        return {f"{evaluation.split}/{name}": value for name, value in scores.items()}

    def tables(self) -> dict:
        """And the test accuracy at each horizontal shift."""
        tables = super().tables()
        if self.curve is not None:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["split", "dx", "accuracy"])
            for i, accuracy in enumerate(self.curve.tolist()):
                writer.writerow(["test", i - self.max, f"{accuracy:.6f}"])
            tables[contract.SHIFT_TABLE] = out.getvalue()
        return tables
