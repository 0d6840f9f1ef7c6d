import pytest
import torch
import torch.nn.functional as F

from harness.training.augment import Augment, affine, random_affine, random_flip, random_jitter, translate
from harness.training.batches import Normalise, TrainBatches


def images(n=6, c=3, h=7, w=9):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8)


def test_circular_translate_equals_torch_roll_per_image():
    x = images()
    dy, dx = torch.tensor([0, 1, -2, 3, 7, -9]), torch.tensor([0, -1, 4, 2, -9, 9])
    out = translate(x, dy, dx, "circular")
    for i in range(len(x)):
        assert torch.equal(out[i], torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(1, 2)))


def test_zero_translate_equals_pad_then_crop():
    x, pad = images(), 4
    dy, dx = torch.tensor([0, 4, -4, 2, -1, 3]), torch.tensor([0, -4, 4, -3, 1, 0])
    out = translate(x, dy, dx, "zero")
    padded = F.pad(x, (pad, pad, pad, pad))
    for i in range(len(x)):
        top, left = pad - int(dy[i]), pad - int(dx[i])  # the crop window that shifts content by (dy, dx)
        assert torch.equal(out[i], padded[i, :, top:top + 7, left:left + 9])


def test_random_flip_mirrors_about_half_and_is_seeded():
    x = images(n=400)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) and not torch.equal(o, i) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped | kept).all() and 150 < flipped.sum() < 250
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(0)))


def test_crop_shifts_stay_within_pad():
    # a single bright pixel in the middle moves by at most pad in each direction
    x = torch.zeros(500, 1, 15, 15, dtype=torch.uint8)
    x[:, :, 7, 7] = 255
    aug = Augment(flip=False, crop=True, pad=3)
    out = aug(x, torch.Generator().manual_seed(1))
    pos = out.view(500, -1).argmax(1)
    dy, dx = pos // 15 - 7, pos % 15 - 7
    assert dy.abs().max() == 3 and dx.abs().max() == 3
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 49  # every shift in [-3, 3]^2 occurs


def test_train_batches_are_reproducible_and_normalised():
    x, y = images(n=64, h=8, w=8), torch.arange(64) % 4
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    aug = Augment(flip=True, crop=True, pad=2)

    def first_epoch():
        batches = TrainBatches(x, y, 16, aug, Normalise(mean, std, "cpu"), "cpu", seed=3)
        return list(batches.epoch())

    a, b = first_epoch(), first_epoch()
    assert len(a) == 4
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    none = Augment(flip=False, crop=False)
    xb, yb = next(TrainBatches(x, y, 64, none, Normalise(mean, std, "cpu"), "cpu", seed=0).epoch())
    expected = (x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    # the batch is a permutation of all 64 normalised images
    assert torch.allclose(torch.sort(xb.flatten(1).sum(1)).values, torch.sort(expected.flatten(1).sum(1)).values, atol=1e-4)



def test_a_quarter_turn_is_rot90_and_factor_one_is_the_identity():
    x = images(n=6, h=9, w=9)
    turned = affine(x, torch.full((6,), 90.0), torch.ones(6)).round().to(torch.uint8)
    assert torch.equal(turned, torch.rot90(x, 1, dims=(2, 3))) or torch.equal(turned, torch.rot90(x, -1, dims=(2, 3)))
    assert torch.equal(affine(x, torch.zeros(6), torch.ones(6)).round().to(torch.uint8), x)


def test_random_rotation_and_scale_stay_within_their_ranges():
    # a bright dot 3 pixels right of the centre of a 15x15 image: rotation moves it on a circle
    x = torch.zeros(400, 1, 15, 15, dtype=torch.uint8)
    x[:, 0, 7, 10] = 255
    out = random_affine(x, 30.0, 0.0, torch.Generator().manual_seed(0)).float()
    ys, xs = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
    mass = out[:, 0].sum((1, 2))
    cy, cx = (out[:, 0] * ys).sum((1, 2)) / mass - 7, (out[:, 0] * xs).sum((1, 2)) / mass - 7
    angles = torch.rad2deg(torch.atan2(cy, cx)).abs()
    assert angles.max() <= 31 and angles.max() > 25  # uniform in [-30, 30]: the range is reached
    scaled = random_affine(x, 0.0, 0.2, torch.Generator().manual_seed(0)).float()
    radius = (scaled[:, 0] * xs).sum((1, 2)) / scaled[:, 0].sum((1, 2)) - 7
    assert 2.3 < radius.min() < 2.6 and 3.4 < radius.max() < 3.7  # 3 pixels times [0.8, 1.2]


def test_jitter_adds_noise_of_the_asked_spread_and_is_reproducible():
    x = torch.full((64, 3, 16, 16), 128, dtype=torch.uint8)
    out = random_jitter(x, 0.05, torch.Generator().manual_seed(1))
    noise = out.float() - 128
    assert abs(noise.mean().item()) < 0.2 and noise.std().item() == pytest.approx(0.05 * 255, rel=0.02)
    assert torch.equal(out, random_jitter(x, 0.05, torch.Generator().manual_seed(1)))
