import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import channel_stats, hold_out
from harness.data.imagefolder import ImageFolder
from harness.data.synthetic import Synthetic
from harness.errors import DataError

from conftest import SHARED_DATA


def synthetic(**overrides):
    return Synthetic(**{"train_size": 512, "test_size": 128, "val_size": 64, **overrides}).load()


def test_synthetic_is_deterministic_balanced_and_split():
    a, b = synthetic(), synthetic()
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, synthetic(seed=1).train_x)
    assert (len(a.train_x), len(a.val_x), len(a.test_x)) == (448, 64, 128)
    counts = torch.bincount(torch.cat([a.train_y, a.val_y]), minlength=8)
    assert counts.tolist() == [64] * 8
    assert a.classes[:2] == ["square", "disc"] and a.train_x.dtype == torch.uint8


def test_synthetic_shapes_sit_at_varying_positions():
    splits = synthetic()
    # the centre of mass of the foreground varies: foreground differs from the background
    # colour (the mean of a corner patch) by at least 0.35 * 255 in each channel, noise by ~15
    x = splits.train_x.float()
    background = x[:, :, :2, :2].mean((2, 3), keepdim=True)
    foreground = (x - background).abs().sum(1) > 150
    ys = (foreground.float() * torch.arange(32.0)[None, :, None]).sum((1, 2)) / foreground.sum((1, 2))
    assert ys.std() > 3


def test_hold_out_is_disjoint_and_complete():
    x = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8)
    y = torch.arange(100)
    tx, ty, vx, vy = hold_out(x, y, 10, seed=0)
    assert len(vx) == 10 and len(tx) == 90
    assert sorted(ty.tolist() + vy.tolist()) == list(range(100))
    assert len(hold_out(x, y, 0.25, seed=0)[2]) == 25
    assert torch.equal(hold_out(x, y, 10, seed=0)[3], vy)
    for bad in (100, 150):
        with pytest.raises(DataError, match=f"validation split of {bad} images leaves none of the 100"):
            hold_out(x, y, bad, seed=0)


def test_channel_stats_match_numpy():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=7)
    ref = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean.numpy(), ref.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(std.numpy(), ref.std(axis=(0, 2, 3)), atol=1e-6)


def write_image_folder(root: Path, per_class=4, size=8):
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog", "emu"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                written[(split, name, i)] = pixels
    return written


def image_folder(root, cache_dir):
    return ImageFolder(str(root), str(cache_dir), val_size=0)


def test_imagefolder_decodes_pngs_and_caches(tmp_path):
    written = write_image_folder(tmp_path / "images")
    source = image_folder(tmp_path / "images", tmp_path / "cache")
    splits = source.load()
    assert splits.classes == ["cat", "dog", "emu"]
    assert splits.train_x.shape == (12, 3, 8, 8) and splits.test_x.shape == (12, 3, 8, 8)
    # test images keep file order: class dog (label 1), image 2 is test index 4 + 2
    assert splits.test_y[6].item() == 1
    assert np.array_equal(splits.test_x[6].permute(1, 2, 0).numpy(), written[("test", "dog", 2)])
    caches = list((tmp_path / "cache").glob("*.npz"))
    assert len(caches) == 1
    before = caches[0].stat().st_mtime_ns
    source.load()
    assert caches[0].stat().st_mtime_ns == before  # second load read the cache
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images/train/cat/9.png")
    assert len(source.load().train_x) == 13  # a new file invalidates the cache


def test_imagefolder_errors_name_the_problem(tmp_path):
    write_image_folder(tmp_path / "images")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "images/train/cat/odd.png")
    with pytest.raises(DataError, match="odd.png is 9x9"):
        image_folder(tmp_path / "images", tmp_path / "cache").load()
    with pytest.raises(DataError, match="no train/ folder"):
        image_folder(tmp_path / "missing", tmp_path / "cache").load()


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(), reason="../shared/data not present")
def test_imagefolder_reads_the_shared_cifar10_jpeg_copy(tmp_path):
    # a slice of the real archive: the first 20 images of each class in both splits
    names = subprocess.run(["tar", "-tzf", str(SHARED_DATA / "cifar10-jpeg.tar.gz")],
                           capture_output=True, text=True, check=True).stdout.split()
    images = [n for n in names if n.endswith(".jpg")]
    by_folder = {}
    for name in images:
        by_folder.setdefault(str(Path(name).parent), []).append(name)
    chosen = [n for folder in by_folder.values() for n in sorted(folder)[:20]]
    subprocess.run(["tar", "-xzf", str(SHARED_DATA / "cifar10-jpeg.tar.gz"), "-C", str(tmp_path), *chosen], check=True)
    root = tmp_path / Path(chosen[0]).parents[2]
    splits = image_folder(root, tmp_path / "cache").load()
    assert splits.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert splits.train_x.shape == (200, 3, 32, 32) and splits.test_x.shape == (200, 3, 32, 32)
    assert 0.3 < splits.mean.mean().item() < 0.7  # natural images, not blank


def test_imagefolder_keeps_one_channel_for_grayscale_and_three_once_any_image_has_colour(tmp_path):
    root = tmp_path / "gray"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.full((10, 12), 77, np.uint8), mode="L").save(root / split / name / "0.png")
    gray = image_folder(root, tmp_path / "cache").load()
    assert gray.train_x.shape == (2, 1, 10, 12) and gray.test_x.shape == (2, 1, 10, 12)
    Image.fromarray(np.full((10, 12, 3), (10, 20, 30), np.uint8)).save(root / "test" / "b" / "1.png")
    mixed = image_folder(root, tmp_path / "cache").load()
    assert mixed.train_x.shape == (2, 3, 10, 12) and mixed.test_x.shape == (3, 3, 10, 12)
    assert mixed.train_x[0, :, 0, 0].tolist() == [77, 77, 77]  # grey repeated in every channel
    assert mixed.test_x[2, :, 0, 0].tolist() == [10, 20, 30]


def test_a_training_subset_is_class_balanced_seeded_and_leaves_val_and_test_alone():
    full = synthetic()
    part = synthetic(train_subset=100)
    assert len(part.train_x) == 100 and torch.equal(part.val_x, full.val_x) and torch.equal(part.test_x, full.test_x)
    assert sorted(torch.bincount(part.train_y, minlength=8).tolist()) == [12] * 4 + [13] * 4
    # every kept image is one of the full split's, with its label
    rows = {bytes(x.numpy().tobytes()): int(y) for x, y in zip(full.train_x, full.train_y)}
    assert all(rows[bytes(x.numpy().tobytes())] == int(y) for x, y in zip(part.train_x, part.train_y))
    assert torch.equal(part.train_x, synthetic(train_subset=100).train_x)
    assert not torch.equal(part.train_x, synthetic(train_subset=100, split_seed=1).train_x)
    assert torch.equal(part.mean, channel_stats(part.train_x)[0])  # normalised by what it trains on
    with pytest.raises(DataError, match="training subset of 449"):
        synthetic(train_subset=449)


def test_a_test_subset_is_class_balanced_and_leaves_training_alone():
    full = synthetic()
    part = synthetic(test_subset=40)
    assert len(part.test_x) == 40 and torch.equal(part.train_x, full.train_x) and torch.equal(part.val_x, full.val_x)
    assert torch.bincount(part.test_y, minlength=8).tolist() == [5] * 8
    rows = {bytes(x.numpy().tobytes()): int(y) for x, y in zip(full.test_x, full.test_y)}
    assert all(rows[bytes(x.numpy().tobytes())] == int(y) for x, y in zip(part.test_x, part.test_y))
    with pytest.raises(DataError, match="test subset of 129 images: must be between 1 and the 128 test images"):
        synthetic(test_subset=129)


def test_trainer_try_validates_and_tests_on_small_slices_of_real_data():
    from conftest import compose_config

    cfg = compose_config("trainer=try", "data=imagefolder", "data.root=/somewhere")
    assert (cfg.data.val_size, cfg.data.test_subset, cfg.trainer.steps) == (500, 1000, 60)
    assert cfg.probes.shift.images == compose_config("trainer=smoke").probes.shift.images  # probes=smoke
