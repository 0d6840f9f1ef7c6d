"""Hostile input to the training CLI, as a table: each row is a command line, the exit status
and a piece of the one line it must print. A refused value leaves nothing behind (no store, no
runs folder); a refused image folder leaves its cache lock free and no partial cache."""

import fcntl
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.app import main

from conftest import run_cli

# (overrides, what the one line must say): `{tmp}` is the test's empty folder; paths.runs is
# {tmp}/runs unless the row sets it
BAD_VALUES = [
    # the audit's
    (["tracking.experiment=" + "x" * 9000], "tracking.experiment='xxxxx"),
    (["tracking.experiment=" + "x" * 9000], "(9,000 characters) must be a name of 1 to 500 characters"),
    (["trainer.seed=18446744073709551616"],
     "trainer.seed=18446744073709551616 must be a non-negative integer below 2**64"),
    (["paths.runs={tmp}/a?b"], "paths.runs='{tmp}/a?b' must be a folder without ? or % (they break the store's sqlite"),
    # the same kinds
    (["data.split_seed=18446744073709551616"], "data.split_seed=18446744073709551616 must be a non-negative integer"),
    (["data=synthetic", "data.seed=18446744073709551616"], "data.seed=18446744073709551616 must be a non-negative"),
    (["probes.shift.seed=18446744073709551616"], "probes.shift.seed=18446744073709551616 must be a non-negative"),
    (["trainer.seed=-1"], "trainer.seed=-1 must be a non-negative integer below 2**64"),
    (["paths.runs={tmp}/a%20b"], "paths.runs='{tmp}/a%20b' must be a folder without ? or %"),  # read as `a b`
    (["paths.runs='{tmp}/a\nb'"], "paths.runs='{tmp}/a\\nb' must be a folder without ? or % (they break"),
    (["paths.runs={tmp}/a\nb"], "paths.runs={tmp}/a\\nb: LexerNoViableAltException"),  # unquoted: the grammar's
    (["tracking.uri='sqlite:///{tmp}/mlflow.db?mode=ro'"], "must name the store's file without ? or %"),
    (["tracking.experiment='a\tb'"], "tracking.experiment='a\\tb' has a control character ('\\t')"),
    (["tracking.experiment="], "tracking.experiment='' must be a name of 1 to 500 characters"),
    (["data.url='https://example.org/" + "x" * 7000 + "'"], "characters) is longer than the 6000 characters MLflow"),
    (["data.val_size=inf"], "data.val_size=inf must be a count of training images or a fraction"),
    (["data.val_size=nan"], "data.val_size=nan must be a count of training images or a fraction"),
    (["model.width=inf"], "model.width=inf must be a positive number"),
    (["optim.weight_decay=nan"], "optim.weight_decay=nan must be at least 0"),
    (["trainer.progress_every=nan"], "trainer.progress_every=nan must be 0 (no progress lines) or a number of seconds"),
    (["tracking.timeout=inf"], "tracking.timeout=inf must be a positive number of seconds"),
    (["trainer.threads=99999999999999"], "trainer.threads='99999999999999' must be auto or a positive integer up to"),
    (["trainer.device=cuda:99"], "trainer.device='cuda:99' but"),
    (["data=synthetic", "data.train_size=100000000000"],
     "data.train_size=100000000000 is more 32-pixel images than the harness generates: at most 262,144"),
    (["data=synthetic", "data.image_size=256", "data.test_size=5000"],
     "data.test_size=5000 is more 256-pixel images than the harness generates: at most 4,096"),
    (["model.depth=1208"], "model.depth=1208 is deeper than 1202, the deepest CIFAR ResNet of He et al."),
    (["model.width=1e308"], "model.width=1e+308 must be a positive number with at least 1 filter"),
    (["optim.lr=inf"], "optim.lr=inf must be a positive number"),
    (["tracking.timeout=1e308"], "tracking.timeout=1e+308 must be a positive number of seconds, at most 86400"),
    (["trainer.log_every=100000000000000000000"], "trainer.log_every=100000000000000000000 does not fit in 64 bits"),
    (["probes.shift.images=9223372036854775808"], "probes.shift.images=9223372036854775808 does not fit in 64 bits"),
    (["paths.data="], "paths.data='' must be a folder"),
    (["-m", "model.depth=8,14", "tracking.experiment=" + "y" * 600], "(600 characters) must be a name of 1 to 500"),
    (["-m", "model.depth=8,14", "paths.runs={tmp}/a?b"], "paths.runs='{tmp}/a?b' must be a folder without ?"),
]


@pytest.mark.parametrize("overrides, says", BAD_VALUES, ids=[" ".join(o)[:80] for o, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_exit_2_and_nothing_written(overrides, says, monkeypatch, capsys, tmp_path):
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    if not any(o.startswith("paths.runs=") for o in overrides):
        overrides.append(f"paths.runs={tmp_path}/runs")
    monkeypatch.setattr(sys, "argv", ["harness", *overrides])
    with pytest.raises(SystemExit) as exit_status:
        main()
    assert exit_status.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    says = says.replace("{tmp}", str(tmp_path))
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no store, no runs folder, nothing


# ---------------------------------------------------------------- image folders


def write_folder(root: Path, size=8):
    """train/ and test/ with classes cat and dog, 4 PNGs each, all size x size."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit grey pixels and holds none: what a reader sees first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def truncated_jpeg(path: Path):
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:200])


def outside_link(root: Path, path: Path):
    outside = root.parent / "elsewhere.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    path.symlink_to(outside)


# (what is done to a good folder, the exit status, what the one line says)
BAD_FOLDERS = [
    (lambda r: os.mkfifo(r / "train/cat/9.png"), 2, "train/cat/9.png is a FIFO, not an image file"),
    (lambda r: (r / "train/cat/9.png").mkdir(), 2, "train/cat/9.png is a folder, not an image file"),
    (lambda r: outside_link(r, r / "train/cat/9.png"), 2, "train/cat/9.png links to"),
    (lambda r: (r / "train/dog/9.png").symlink_to(r / "missing.png"), 2, "9.png is unreadable (No such file"),
    (lambda r: [(r / "train/cat/9.png").symlink_to("8.png"), (r / "train/cat/8.png").symlink_to("9.png")], 2,
     "8.png is unreadable (Too many levels of symbolic links)"),
    (lambda r: (r / "train/cat/9.png").write_bytes(b""), 2, "train/cat/9.png is not an image Pillow can read"),
    (lambda r: (r / "train/dog/9.png").write_text("text"), 2, "train/dog/9.png is not an image Pillow can read"),
    (lambda r: truncated_jpeg(r / "test/dog/9.jpg"), 2, "cannot decode image {root}/test/dog/9.jpg: Truncated"),
    (lambda r: Image.new("RGB", (1, 1)).save(r / "train/cat/9.png"), 2, "9.png is 1x1, but other images are 8x8"),
    (lambda r: Image.new("L", (2000, 2000)).save(r / "train/cat/0.png"), 2,
     "0.png is 2000x2000: images may be at most 1024x1024 pixels"),
    # headers without pixels: a size refused from the header alone, before any decoding
    (lambda r: (r / "train/cat/0.png").write_bytes(png_header(2000, 2000)), 2, "0.png is 2000x2000: images may be"),
    (lambda r: (r / "test/cat/9.png").write_bytes(png_header(9, 9)), 2, "9.png is 9x9, but other images are 8x8"),
    (lambda r: (r / "train/cat/0.png").write_bytes(png_header(20000, 20000)), 2,
     "cannot decode image {root}/train/cat/0.png: Image size (400000000 pixels) exceeds limit"),
    (lambda r: (r / "train/cat/0.png").write_bytes(png_header(12000, 12000)), 2,
     "cannot decode image {root}/train/cat/0.png: Image size (144000000 pixels) exceeds limit"),
    (lambda r: [p.unlink() for p in (r / "train/dog").iterdir()], 2, "test has classes not in"),
    (lambda r: (r / "test").rename(r / "tests"), 2, "has no test/ folder"),
]


def lock_is_free(folder: Path) -> bool:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("spoil, status, says", BAD_FOLDERS, ids=[row[2][:50] for row in BAD_FOLDERS])
def test_a_bad_image_folder_is_one_line_and_leaves_the_cache_alone(spoil, status, says, tmp_path):
    root, runs_dir = tmp_path / "images", tmp_path / "runs"
    write_folder(root)
    spoil(root)
    result = run_cli("data=imagefolder", f"data.root={root}", "trainer=smoke", runs_dir=runs_dir, timeout=120)
    lines, says = [line for line in result.stderr.splitlines() if line.strip()], says.replace("{root}", str(root))
    assert result.returncode == status and len(lines) == 1 and says in lines[0], result.stderr[-3000:]
    cache = runs_dir / "data" / "cache"
    assert not cache.exists() or (lock_is_free(cache) and list(cache.iterdir()) == [])  # no partial cache


def test_a_symlink_inside_the_root_is_read_as_its_target(tmp_path):
    from harness.data.imagefolder import ImageFolder

    root = tmp_path / "images"
    write_folder(root)
    (root / "train/cat/9.png").symlink_to(root / "test/dog/0.png")
    splits = ImageFolder(str(root), str(tmp_path / "cache"), val_size=0).load()
    target = torch.from_numpy(np.asarray(Image.open(root / "test/dog/0.png")).transpose(2, 0, 1).copy())
    assert len(splits.train_x) == 9
    as_cat = [i for i, x in enumerate(splits.train_x) if torch.equal(x, target)]
    assert len(as_cat) == 1 and splits.train_y[as_cat[0]].item() == splits.classes.index("cat")
