"""How shift-invariant a trained network is, on a labelled split.

- consistency: P(same prediction) for two independent random shifts of each image, uniform
  in [-max, max]^2 (Zhang 2019, "Making convolutional networks shift-invariant again");
- one-pixel instability: P(top-1 changes) under a 1-pixel diagonal shift, and the mean
  |change| of the probability of the unshifted top class (Azulay & Weiss 2019);
- accuracy at each horizontal shift dx in [-max, max].
Shifts act on the uint8 images before normalisation: `circular` rolls, `translate` moves
the content and fills the uncovered border with zeros (as crop augmentation pads).
"""

from contextlib import nullcontext
from enum import Enum

import torch

from harness import contract
from harness.augment import translate
from harness.batches import eval_batches


class ShiftMode(str, Enum):
    circular = "circular"  # roll: content leaving one side enters the other
    translate = "translate"  # move the content, zero-fill the uncovered border


FILL = {ShiftMode.circular: "circular", ShiftMode.translate: "zero"}


@torch.inference_mode()
def shift_scores(model, x, y, normalise, max_shift: int, mode: str, batch_size: int, seed: int,
                 autocast=nullcontext, curve: bool = True):
    """({"shift_consistency", "shift_instability_1px", "shift_prob_change_1px"}: 0-d tensors,
    accuracy per horizontal shift: a (2 max + 1,) tensor for dx = -max ... max, or None
    without `curve`). No host sync; 4 forward passes per image, 2 max more for the curve."""
    device = x.device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    fill = FILL[ShiftMode(mode)]

    def logits_of(images, dy, dx):
        if not isinstance(dy, torch.Tensor):
            dy = torch.full((len(images),), dy, device=device)
            dx = torch.full((len(images),), dx, device=device)
        with autocast():
            return model(normalise(translate(images, dy, dx, fill))).float()

    agree = torch.zeros((), device=device)
    changed = torch.zeros((), device=device)
    prob_change = torch.zeros((), device=device)
    correct_at = torch.zeros(2 * max_shift + 1, device=device)
    for xb, yb in eval_batches(x, y, batch_size):
        base = logits_of(xb, 0, 0)
        base_pred = base.argmax(1)
        shifts = torch.randint(-max_shift, max_shift + 1, (4, len(xb)), device=device, generator=generator)
        first = logits_of(xb, shifts[0], shifts[1]).argmax(1)
        second = logits_of(xb, shifts[2], shifts[3]).argmax(1)
        agree += (first == second).sum()
        one_pixel = logits_of(xb, 1, 1)
        changed += (one_pixel.argmax(1) != base_pred).sum()
        p_base = base.softmax(1).gather(1, base_pred[:, None])
        p_shifted = one_pixel.softmax(1).gather(1, base_pred[:, None])
        prob_change += (p_shifted - p_base).abs().sum()
        for i, dx in enumerate(range(-max_shift, max_shift + 1) if curve else []):
            pred = base_pred if dx == 0 else logits_of(xb, 0, dx).argmax(1)
            correct_at[i] += (pred == yb).sum()
    model.train(was_training)
    n = len(x)
    scores = {contract.SHIFT_CONSISTENCY: agree / n, contract.SHIFT_INSTABILITY: changed / n,
              contract.SHIFT_PROB_CHANGE: prob_change / n}
    return scores, correct_at / n if curve else None
