"""Datasets as uint8 tensors: train/val/test splits and the training set's channel statistics.

Each dataset is a DataSource whose `read()` returns full-size uint8 arrays (N, C, H, W) and
int64 labels; `load()` holds out the validation split and computes the normalisation from
what is left. A new dataset is a DataSource subclass and a YAML file in conf/data/.
"""

from dataclasses import dataclass

import torch

from harness.errors import DataError


@dataclass
class Splits:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list
    mean: torch.Tensor  # float32 (C,), in [0, 1], of the training split only
    std: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


class DataSource:
    """val_size: a count of training images held out for validation, or a fraction of them
    below 1; train_subset: if not 0, train on only this many of the rest, the same number per
    class; test_subset: likewise, test on only this many; split_seed fixes which images,
    independently of the training seed."""

    IMAGE_SIZE = None  # the images' side in pixels, where it is known before reading
    TRAIN_SIZE = None  # the training images before the validation split, where known before reading

    def __init__(self, val_size: float = 0, split_seed: int = 0, train_subset: int = 0, test_subset: int = 0):
        self.val_size, self.split_seed, self.train_subset = val_size, split_seed, train_subset
        self.test_subset = test_subset

    def read(self):
        """(train_x, train_y, test_x, test_y, classes)"""
        raise NotImplementedError

    def load(self) -> Splits:
        train_x, train_y, test_x, test_y, classes = self.read()
        train_x, train_y, val_x, val_y = hold_out(train_x, train_y, self.val_size, self.split_seed)
        if self.train_subset:
            keep = class_balanced(train_y, self.train_subset, self.split_seed)
            train_x, train_y = train_x[keep], train_y[keep]
        if self.test_subset:
            keep = class_balanced(test_y, self.test_subset, self.split_seed, "test")
            test_x, test_y = test_x[keep], test_y[keep]
        mean, std = channel_stats(train_x)
        return Splits(train_x, train_y, val_x, val_y, test_x, test_y, list(classes), mean, std)


def hold_out(x, y, val_size: float, seed: int):
    """Split off a random validation set: `val_size` images, or that fraction if below 1."""
    n = len(x)
    count = round(val_size * n) if 0 < val_size < 1 else int(val_size)
    if not 0 <= count < n:
        raise DataError(f"the validation split of {val_size:g} images leaves none of the {n} training images to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:count], order[count:]
    return x[train], y[train], x[val], y[val]


def class_balanced(labels: torch.Tensor, count: int, seed: int, split: str = "training") -> torch.Tensor:
    """Indices of `count` labels, as equal a number per class as the classes allow (the first
    classes get one more when count does not divide), drawn at random within each class."""
    classes, sizes = labels.unique(return_counts=True)
    if not 0 < count <= len(labels):
        raise DataError(f"a {split} subset of {count} images: must be between 1 and the {len(labels)} {split} images")
    share = torch.full((len(classes),), count // len(classes))
    share[: count % len(classes)] += 1
    if (share > sizes).any():
        raise DataError(f"a class-balanced {split} subset of {count} images: a class has only "
                        f"{sizes.min().item()} {split} images")
    generator = torch.Generator().manual_seed(seed)
    chosen = [torch.nonzero(labels == c).flatten()[torch.randperm(int(n), generator=generator)[:k]]
              for c, n, k in zip(classes, sizes, share)]
    return torch.cat(chosen).sort().values


def channel_stats(x: torch.Tensor, chunk: int = 4096):
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return (mean / 255).float(), (std / 255).float()
