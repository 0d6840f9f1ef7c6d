"""Datasets on the device: shuffled, augmented, normalised batches with no per-sample Python.

The uint8 images live on the training device. Each epoch is shuffled and augmented there
in a few whole-epoch tensor operations (a dozen kernel launches an epoch, not a dozen a
step); each batch is then a slice, converted to float and normalised. Batch order and
augmentation draw from one generator on that device, seeded from trainer.seed, so a run
is reproducible.
"""

import torch


class Normalise:
    """uint8 images to float, minus the training mean, over the training std, per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, device, memory_format=torch.contiguous_format):
        self.scale = (1 / (255 * std)).view(1, -1, 1, 1).to(device)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(device)
        self.memory_format = memory_format  # the layout the model's convolutions want (channels_last)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.to(torch.float32, memory_format=self.memory_format)  # one copy: cast and layout
        return torch.addcmul(self.shift, x, self.scale)


class TrainBatches:
    """One epoch = a random permutation cut into full batches (the remainder is dropped,
    so every step has the same shape)."""

    def __init__(self, x, y, batch_size, augment, normalise, device, seed):
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.augment = augment
        self.normalise = normalise
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def epoch(self, first_batch: int = 0):
        """The epoch's batches from `first_batch` on (a resumed epoch: the generator is restored to
        its state at the epoch's start, so the order and augmentation are the same again)."""
        order = torch.randperm(len(self.x), device=self.x.device, generator=self.generator)[:len(self) * self.batch_size]
        x, y = self.augment(self.x[order], self.generator), self.y[order]  # one uint8 copy of the epoch
        for start in range(first_batch * self.batch_size, len(order), self.batch_size):
            yield self.normalise(x[start:start + self.batch_size]), y[start:start + self.batch_size]


def eval_batches(x, y, batch_size):
    """Consecutive slices of a (device) dataset, the last one possibly short."""
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]
