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

The sample is fixed, seeded and stratified by class (`stratified_sample`), never the first
images of a split, which an image folder stores class by class.
"""

from contextlib import nullcontext
from enum import Enum

import torch
import torch.nn.functional as F

from harness import contract
from harness.augment import translate


class ShiftMode(str, Enum):
    circular = "circular"  # roll: content leaving one side enters the other
    translate = "translate"  # move the content, zero-fill the uncovered border


FILL = {ShiftMode.circular: "circular", ShiftMode.translate: "zero"}


def stratified_sample(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of min(n, len(labels)) items: each class gets its share of n (largest
    remainders first, ties to the smaller class index), drawn at random within the class."""
    labels = labels.cpu()
    n = min(n, len(labels))
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n / len(labels)
    shares = exact.floor().long()
    remainders = exact - shares
    extra = torch.argsort(-remainders, stable=True)[: n - int(shares.sum())]
    shares[extra] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, share in zip(classes, shares):
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:share]])
    return torch.cat(chosen).sort().values


def shift_grid(max_shift: int) -> list:
    """[(dy, dx)] in row-major order."""
    return [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]


@torch.inference_mode()
def shift_predictions(model, x, normalise, max_shift: int, mode, batch_size: int, autocast=nullcontext):
    """(predicted class of each image under each shift: (N, K) int64, softmax under shifts (0, 0)
    and (1, 1): two (N, classes) tensors). The N * K shifted copies go through the model in
    batches of batch_size; which rows are which is known on the host, so nothing waits for the device."""
    grid = shift_grid(max_shift)
    shifts = torch.tensor(grid, device=x.device)
    fill = FILL[ShiftMode(mode)]
    n, k = len(x), len(grid)
    was_training = model.training
    model.eval()
    predictions = torch.empty(n * k, dtype=torch.int64, device=x.device)
    watched = {grid.index((0, 0)): None, grid.index((1, 1)): None}  # shift index: softmax (N, classes)
    for start in range(0, n * k, batch_size):  # pair p = image p // k under shift p % k
        end = min(start + batch_size, n * k)
        pairs = torch.arange(start, end, device=x.device)
        image, shift = pairs // k, pairs % k
        with autocast():
            logits = model(normalise(translate(x[image], shifts[shift, 0], shifts[shift, 1], fill))).float()
        predictions[start:end] = logits.argmax(1)
        for index in watched:
            first = start + (index - start) % k  # the chunk's first pair under this shift
            if first < end:
                if watched[index] is None:
                    watched[index] = torch.empty(n, logits.shape[1], device=x.device)
                rows = torch.arange(first - start, end - start, k, device=x.device)
                watched[index][first // k:first // k + len(rows)] = F.softmax(logits[rows], 1)
    model.train(was_training)
    p_base, p_shifted = watched.values()
    return predictions.view(n, k), p_base, p_shifted


def shift_scores(model, x, y, normalise, max_shift: int, mode, batch_size: int, autocast=nullcontext):
    """({consistency, its standard error, 1-pixel instability, 1-pixel probability change}: 0-d
    tensors, accuracy at each horizontal shift dx = -max ... max: a (2 max + 1,) tensor)."""
    predictions, p_base, p_shifted = shift_predictions(model, x, normalise, max_shift, mode, batch_size, autocast)
    grid = shift_grid(max_shift)
    k = len(grid)
    counts = F.one_hot(predictions, p_base.shape[1]).sum(1).double()  # (N, classes)
    consistency = (counts / k).square().sum(1)  # per image: P(two uniform shifts agree)
    standard_error = consistency.std() / len(x) ** 0.5 if len(x) > 1 else torch.zeros((), device=x.device)
    base = predictions[:, grid.index((0, 0))]
    changed = predictions[:, grid.index((1, 1))] != base
    prob_change = (p_shifted.gather(1, base[:, None]) - p_base.gather(1, base[:, None])).abs()
    accuracy_at = torch.stack([(predictions[:, grid.index((0, dx))] == y).double().mean()
                               for dx in range(-max_shift, max_shift + 1)])
    scores = {contract.SHIFT_CONSISTENCY: consistency.mean(), contract.SHIFT_CONSISTENCY_SE: standard_error,
              contract.SHIFT_INSTABILITY: changed.double().mean(), contract.SHIFT_PROB_CHANGE: prob_change.mean()}
    return scores, accuracy_at
