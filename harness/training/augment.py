"""Batched augmentation on the training device: flips, translations, rotations, scalings and
pixel jitter of uint8 images, a whole epoch at a time.

Pad-and-random-crop (He et al.'s "4 pixels padded on each side, 32x32 crop") is the same
thing as translating each image by a random (dy, dx) in [-pad, pad]^2 with zero fill,
which is how it is done here: one gather for the whole batch, no padding copy. Rotations
and scalings resample each image through one affine grid (bilinear, zero fill); jitter adds
Gaussian noise to every pixel. Every draw comes from the given generator.
"""

import math

import torch
import torch.nn.functional as F

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


def affine(x: torch.Tensor, degrees: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate image i of x (N, C, H, W) by degrees[i] about its centre and scale its content by
    factor[i] (above 1: larger), bilinear, zero fill; float out, in x's units."""
    angle = degrees.float() * math.pi / 180
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor  # output -> input coordinates
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(x: torch.Tensor, rotate: float, scale: float, generator: torch.Generator,
                  chunk: int = 4096) -> torch.Tensor:
    """Each image rotated by a uniform angle in [-rotate, rotate] degrees and scaled by a uniform
    factor in [1 - scale, 1 + scale], in chunks (the float copy of an epoch would be large)."""
    uniform = torch.rand(2, x.shape[0], device=x.device, generator=generator) * 2 - 1
    degrees, factor = rotate * uniform[0], 1 + scale * uniform[1]
    out = torch.empty_like(x)
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        out[part] = affine(x[part], degrees[part], factor[part]).round().clamp(0, 255).to(x.dtype)
    return out


def random_jitter(x: torch.Tensor, sigma: float, generator: torch.Generator, chunk: int = 4096) -> torch.Tensor:
    """Gaussian noise of standard deviation sigma (in units of the pixel range) on every pixel."""
    out = torch.empty_like(x)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        noise = torch.randn(part.shape, device=x.device, generator=generator) * (255 * sigma)
        out[start:start + chunk] = (part.float() + noise).round().clamp(0, 255).to(x.dtype)
    return out


class Augment:
    """The training augmentation as a function of (uint8 batch, generator): rotation and scale,
    then pad-and-crop, flip, and pixel jitter, each when asked for."""

    def __init__(self, flip: bool = False, crop: bool = False, pad: int = 4, rotate: float = 0.0,
                 scale: float = 0.0, jitter: float = 0.0):
        self.flip, self.crop, self.pad = flip, crop, pad
        self.rotate, self.scale, self.jitter = rotate, scale, jitter

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.rotate or self.scale:
            x = random_affine(x, self.rotate, self.scale, generator)
        if self.crop:
            x = random_translate(x, self.pad, generator)
        if self.flip:
            x = random_flip(x, generator)
        if self.jitter:
            x = random_jitter(x, self.jitter, generator)
        return x
