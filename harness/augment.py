"""Batched augmentation on the training device: flips and translations of uint8 images.

Pad-and-random-crop (He et al.'s "4 pixels padded on each side, 32x32 crop") is the same
thing as translating each image by a random (dy, dx) in [-pad, pad]^2 with zero fill,
which is how it is done here: one gather for the whole batch, no padding copy.
"""

import torch

FILLS = ("zero", "circular")


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, mode: str = "zero") -> torch.Tensor:
    """Shift image i of x (N, C, H, W) down by dy[i] and right by dx[i] pixels.

    mode "zero": content leaving the frame is lost and the uncovered border is 0;
    mode "circular": content wraps around (torch.roll per image).
    """
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # source row per output row
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]
    if mode == "circular":
        rows, cols = rows % h, cols % w
    elif mode != "zero":
        raise ValueError(f"fill {mode!r} is not one of {', '.join(FILLS)}")
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = x[batch, channel, rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
    if mode == "zero":
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        out = out * inside[:, None].to(out.dtype)
    return out


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_translate(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad-and-random-crop: a uniform random shift in [-pad, pad] on each axis, zero fill."""
    dy, dx = torch.randint(-pad, pad + 1, (2, x.shape[0]), device=x.device, generator=generator)
    return translate(x, dy, dx, "zero")


class Augment:
    """Random crops (pad pixels) and flips as a function of (uint8 batch, generator)."""

    def __init__(self, flip: bool = False, crop: bool = False, pad: int = 4):
        self.flip, self.crop, self.pad = flip, crop, pad

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop:
            x = random_translate(x, self.pad, generator)
        if self.flip:
            x = random_flip(x, generator)
        return x
