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
images of a split, which an image folder stores class by class; `Sampled` keeps it, for this
probe and the shift probe, which score the same images (conf/probes/invariance.yaml).
"""

import csv
import io
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import List

import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from harness import contract
from harness.probes.base import Evaluation, Probe, Subject
from harness.training.augment import affine


Family = Enum("Family", {name: name for name in contract.INVARIANCE_FAMILIES}, type=str)


@dataclass
class InvarianceProbeConfig:
    _target_: str = MISSING
    families: List[Family] = field(default_factory=lambda: list(Family))
    rotation: float = 15.0  # degrees: 7 angles in [-rotation, rotation]
    scale: float = 0.2  # 5 factors in [1 - scale, 1 + scale]
    brightness: float = 0.2  # added: -b, 0, b (units of the pixel range) ...
    contrast: float = 0.2  # ... times contrast 1 - c, 1, 1 + c about the image's mean
    images: int = 500  # of the test split, scored at the end
    val_images: int = 100  # of the validation split, scored at each validation
    seed: int = 0


ConfigStore.instance().store(group="schema/probes", name="invariance", node=InvarianceProbeConfig)


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
    """The family's transform parameters, identity included; `cfg`: the Invariance probe or its
    settings (rotation, scale, brightness, contrast)."""
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


class Sampled(Probe):
    """A probe scored on a fixed, class-stratified sample of each split: `images` of the test
    split, `val_images` of the validation split, drawn with `seed`; the same images at every
    evaluation."""

    def __init__(self, subject: Subject, images: int, val_images: int, seed: int):
        super().__init__(subject)
        self.images, self.val_images, self.seed = images, val_images, seed
        self.samples = {}  # split: (indices, labels)

    @classmethod
    def check(cls, node, image_size):
        from harness.config.rules import at_least  # late: harness.config imports the probes

        for key in ("images", "val_images"):
            at_least(node, key, 0)

    def sample_size(self, split: str, available: int) -> int:
        return min(self.images if split == "test" else self.val_images, available)  # as stratified_sample

    def sample(self, evaluation: Evaluation) -> tuple:
        """(images, labels) of the split's sample."""
        if evaluation.split not in self.samples:
            size = self.images if evaluation.split == "test" else self.val_images
            indices = stratified_sample(evaluation.y, size, self.seed).to(evaluation.x.device)
            self.samples[evaluation.split] = (indices, evaluation.y[indices])
        indices, labels = self.samples[evaluation.split]
        return evaluation.x[indices], labels

    def tables(self) -> dict:
        """The images each split's scores are over (index into the split, label)."""
        if not self.samples:
            return {}
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["split", "index", "label"])
        for split, (indices, labels) in self.samples.items():
            writer.writerows([split, i, label] for i, label in zip(indices.tolist(), labels.tolist()))
        return {contract.SHIFT_SAMPLE: out.getvalue()}


def plan_line(split: str, size: int, passes: list) -> str:
    return f"invariance scores on {size:,} {'test' if split == 'test' else 'validation'} images ({' + '.join(passes)} each)"


class Invariance(Sampled):
    """Consistency under each transform family of `families`, and test accuracy at each point
    of its grid (test/acc_at_<family>, at step = the point's index)."""

    def __init__(self, subject: Subject, families: list, rotation: float, scale: float, brightness: float,
                 contrast: float, images: int, val_images: int, seed: int):
        super().__init__(subject, images, val_images, seed)
        self.families = [Family(f) for f in families]
        self.rotation, self.scale, self.brightness, self.contrast = rotation, scale, brightness, contrast
        self.curves = {}  # family: test accuracy at each point of its grid

    @classmethod
    def check(cls, node, image_size):
        from harness.config.rules import fail, fraction  # late: harness.config imports the probes

        super().check(node, image_size)
        if not 0 <= node.rotation <= 180:
            fail(node, "rotation", "must be in [0, 180] degrees")
        for key in ("scale", "brightness", "contrast"):
            fraction(node, key)

    def plan(self, split, available):
        size = self.sample_size(split, available)
        if not size or not self.families:
            return None
        return plan_line(split, size, [f"{len(grid(f, self))} {f.value}s" for f in self.families])

    def at_evaluation(self, evaluation):
        images, labels = self.sample(evaluation)
        scores = {}
        for family in self.families:
            family_metrics, accuracy_at = family_scores(
                self.subject.model, family, self, images, labels, evaluation.normalise, evaluation.batch_size,
                self.subject.num_classes, evaluation.autocast)
            scores.update(family_metrics)
            if evaluation.split == "test":
                self.curves[family.value] = accuracy_at
                for i in range(len(accuracy_at)):
                    evaluation.log(i, {contract.family_acc(family.value): accuracy_at[i]})
        return {f"{evaluation.split}/{name}": value for name, value in scores.items()}

    def tables(self) -> dict:
        """And the test accuracy at each point of each family's grid."""
        tables = super().tables()
        if self.curves:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["family", "point", "parameters", "accuracy"])
            for family, accuracy_at in self.curves.items():
                for i, (params, accuracy) in enumerate(zip(grid(family, self), accuracy_at.tolist())):
                    writer.writerow([family, i, " ".join(f"{v:g}" for v in params), f"{accuracy:.6f}"])
            tables[contract.INVARIANCE_TABLE] = out.getvalue()
        return tables
