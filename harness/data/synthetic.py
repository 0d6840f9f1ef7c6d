"""A small generated dataset that needs no download: one shape or texture per class, drawn at
a random position, size and colour on a noisy background, so a classifier must tolerate
translation. Deterministic from `data.seed`; a CPU trains a ResNet-8 on it in seconds.
"""

import numpy as np
import torch

from harness.data import DataSource

CLASSES = ("square", "disc", "plus", "ring", "hstripes", "vstripes", "checker", "cross")


class Synthetic(DataSource):
    def __init__(self, num_classes: int = 8, image_size: int = 32, train_size: int = 4096, test_size: int = 1024,
                 seed: int = 0, **split):
        super().__init__(**split)  # harness.config.rules has checked the arguments
        self.num_classes, self.image_size, self.seed = num_classes, image_size, seed
        self.train_size, self.test_size = train_size, test_size

    def read(self):
        rng = np.random.default_rng(self.seed)
        train_x, train_y = make_images(rng, self.train_size, self.image_size, self.num_classes)
        test_x, test_y = make_images(rng, self.test_size, self.image_size, self.num_classes)
        return train_x, train_y, test_x, test_y, list(CLASSES[:self.num_classes])


def make_images(rng: np.random.Generator, n: int, size: int, num_classes: int):
    """n uint8 images (n, 3, size, size) with balanced labels in random order."""
    labels = rng.permutation(np.arange(n) % num_classes)
    radius = rng.uniform(size / 8, size / 5, n)
    margin = np.ceil(radius) + 1
    cy = rng.uniform(margin, size - 1 - margin)
    cx = rng.uniform(margin, size - 1 - margin)
    grid = np.arange(size, dtype=np.float64)
    dy = grid[None, :, None] - cy[:, None, None]
    dx = grid[None, None, :] - cx[:, None, None]
    r = radius[:, None, None]
    mask = np.zeros((n, size, size), dtype=bool)
    for c in range(num_classes):
        idx = labels == c
        mask[idx] = _shape_mask(c, dy[idx], dx[idx], r[idx])

    background = rng.uniform(0, 1, (n, 3, 1, 1))
    foreground = (background + rng.uniform(0.35, 0.65, (n, 3, 1, 1))) % 1.0  # always contrasts
    images = np.where(mask[:, None], foreground, background).astype(np.float32)
    images += 0.06 * rng.standard_normal(images.shape, dtype=np.float32)
    x = np.clip(images * 255 + 0.5, 0, 255).astype(np.uint8)
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def _shape_mask(kind: int, dy, dx, r):
    inside = np.maximum(np.abs(dy), np.abs(dx)) <= r
    d2 = dy**2 + dx**2
    if kind == 0:
        return inside
    if kind == 1:
        return d2 <= r**2
    if kind == 2:
        return ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r))
    if kind == 3:
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == 4:
        return inside & (np.floor((dy + r) / 2) % 2 == 0)
    if kind == 5:
        return inside & (np.floor((dx + r) / 2) % 2 == 0)
    if kind == 6:
        return inside & ((np.floor((dy + r) / 2) + np.floor((dx + r) / 2)) % 2 == 0)
    return inside & (np.abs(np.abs(dy) - np.abs(dx)) <= 1)
