"""Datasets as uint8 tensors: train/val/test splits and the training set's channel statistics.

Each dataset module returns full-size uint8 arrays (N, C, H, W) and int64 labels; this
module holds out the validation split and computes the normalisation from what is left.
"""

from dataclasses import dataclass

import torch

from harness.errors import ConfigError

DATASETS = ("cifar10", "synthetic", "imagefolder")


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


def load_dataset(cfg_data) -> Splits:
    """The dataset named by `data.name`, split and with its normalisation statistics."""
    name = cfg_data.name
    if name == "cifar10":
        from harness.data.cifar10 import load_cifar10 as load
    elif name == "synthetic":
        from harness.data.synthetic import load_synthetic as load
    elif name == "imagefolder":
        from harness.data.imagefolder import load_imagefolder as load
    else:
        raise ConfigError(f"data.name={name!r} is not one of {', '.join(DATASETS)}")
    train_x, train_y, test_x, test_y, classes = load(cfg_data)
    train_x, train_y, val_x, val_y = hold_out(train_x, train_y, cfg_data.val_size, cfg_data.split_seed)
    mean, std = channel_stats(train_x)
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, list(classes), mean, std)


def hold_out(x, y, val_size, seed):
    """Split off a random validation set: `val_size` images, or that fraction if below 1."""
    n = len(x)
    count = round(val_size * n) if isinstance(val_size, float) and 0 < val_size < 1 else val_size
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < n:
        raise ConfigError(
            f"data.val_size={val_size!r} must be a count in [0, {n - 1}] or a fraction in (0, 1) "
            f"of the {n} training images"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:count], order[count:]
    return x[train], y[train], x[val], y[val]


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
