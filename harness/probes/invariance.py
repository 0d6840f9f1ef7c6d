"""How invariant a trained network is to a family of transforms, exactly, on a labelled sample.

Every image of the sample is classified once under each of the K transforms of a family's
grid; every score is then exact over those K predictions (no random draw):

- consistency: the probability that two independent uniform draws from the grid give the
  same class, sum_c (n_c / K)^2 for an image whose K predictions fall n_c in class c,
  averaged over images, with its standard error across images (Zhang 2019's measure);
- accuracy at each point of the grid.

Families: shifts (shift.py), and here rotation (degrees in [-r, r], 7 points), scale (a
factor in [1 - s, 1 + s], 5 points) and illumination (brightness b in {-B, 0, B} added and
contrast c in {1 - C, 1, 1 + C} multiplied about the image's mean, 9 points). The transforms
act on the uint8 images before normalisation, on the device, a batch of image x transform
pairs at a time.

The sample is fixed, seeded and stratified by class (`stratified_sample`), never the first
images of a split, which an image folder stores class by class.
"""

from contextlib import nullcontext
from enum import Enum

import torch
import torch.nn.functional as F

from harness import contract
from harness.training.augment import affine


Family = Enum("Family", {name: name for name in contract.INVARIANCE_FAMILIES}, type=str)


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


def grid(family: Family, cfg) -> list:
    """The family's transform parameters, identity included; `cfg`: probes.invariance."""
    return contract.invariance_grid(Family(family).value, cfg)


def transform(family: Family, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Image i under the transform params[i] (one row of the family's grid), float pixels."""
    family = Family(family)
    if family == Family.rotation:
        return affine(images, params[:, 0], torch.ones_like(params[:, 0]))
    if family == Family.scale:
        return affine(images, torch.zeros_like(params[:, 0]), params[:, 0])
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    brightness, contrast = (params[:, i].view(-1, 1, 1, 1) for i in (0, 1))
    return ((x - mean) * contrast + mean + 255 * brightness).clamp(0, 255)


@torch.inference_mode()
def predictions_under(model, x, normalise, apply, k: int, batch_size: int, autocast=nullcontext, keep=()):
    """(the predicted class of each image under each of the k transforms: (N, k) int64,
    {transform index: softmax (N, classes)} for the indices in `keep`). apply(images, indices)
    transforms images[i] by transform indices[i]. The N * k transformed copies go through the
    model in batches of batch_size; which rows are which is known on the host, so nothing
    waits for the device."""
    n = len(x)
    was_training = model.training
    model.eval()
    predictions = torch.empty(n * k, dtype=torch.int64, device=x.device)
    kept = dict.fromkeys(keep)
    for start in range(0, n * k, batch_size):  # pair p = image p // k under transform p % k
        end = min(start + batch_size, n * k)
        pairs = torch.arange(start, end, device=x.device)
        with autocast():
            logits = model(normalise(apply(x[pairs // k], pairs % k))).float()
        predictions[start:end] = logits.argmax(1)
        for index in kept:
            first = start + (index - start) % k  # the batch's first pair under this transform
            if first < end:
                if kept[index] is None:
                    kept[index] = torch.empty(n, logits.shape[1], device=x.device)
                rows = torch.arange(first - start, end - start, k, device=x.device)
                kept[index][first // k:first // k + len(rows)] = F.softmax(logits[rows], 1)
    model.train(was_training)
    return predictions.view(n, k), kept


def consistency(predictions: torch.Tensor, num_classes: int) -> tuple:
    """(mean over images of P(two uniform draws from the grid agree), its standard error)."""
    k = predictions.shape[1]
    counts = F.one_hot(predictions, num_classes).sum(1).double()
    per_image = (counts / k).square().sum(1)
    n = len(predictions)
    return per_image.mean(), per_image.std() / n ** 0.5 if n > 1 else torch.zeros((), device=predictions.device)


def family_scores(model, family: Family, cfg, x, y, normalise, batch_size: int, num_classes: int,
                  autocast=nullcontext):
    """({<family>_consistency, <family>_consistency_se}: 0-d tensors, accuracy at each grid point)."""
    params = torch.tensor(grid(family, cfg), device=x.device)
    predictions, _ = predictions_under(model, x, normalise, lambda images, i: transform(family, images, params[i]),
                                       len(params), batch_size, autocast)
    mean, error = consistency(predictions, num_classes)
    accuracy_at = (predictions == y[:, None]).double().mean(0)
    name = Family(family).value
    return {f"{name}_{contract.CONSISTENCY}": mean, f"{name}_{contract.CONSISTENCY}_se": error}, accuracy_at
