"""Images in class folders: `root/train/<class>/*.png|jpg` and `root/test/<class>/...`, all one
size; one channel if every image is grayscale, else three (grayscale ones repeated).

Only regular files inside the root are read: a symlink is followed and must stay inside, and
anything else named like an image (a folder, a FIFO) is refused. Each image's size is read from
its header and checked before its pixels are decoded.

Decoding thousands of small files takes longer than training on them, so the decoded
uint8 arrays are cached (one .npz per root, rebuilt when the folder's files change).
"""

import hashlib
import logging
import os
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from harness.data import DataSource
from harness.errors import DataError
from harness.files import folder_lock

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp"}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # Pillow modes with one intensity channel
MAX_SIDE = 1024  # pixels: far beyond what a CIFAR-style network trains on, and 3 MB a decoded image


class ImageFolder(DataSource):
    """root/train/<class>/ and root/test/<class>/ images, all one size; decoded arrays are
    cached in cache_dir."""

    def __init__(self, root: str, cache_dir: str, val_size: float = 0.1, **split):
        super().__init__(val_size, **split)
        self.root, self.cache_dir = Path(os.path.realpath(Path(root).expanduser())), Path(cache_dir)

    def read(self):
        return read_imagefolder(self.root, self.cache_dir)


def read_imagefolder(root: Path, cache_dir: Path):
    files = {split: _list_split(root, split) for split in ("train", "test")}
    classes = sorted(files["train"])
    unknown = sorted(set(files["test"]) - set(classes))
    if unknown:
        raise DataError(f"{root}/test has classes not in {root}/train: {', '.join(unknown)}")
    cache = cache_dir / f"imagefolder-{_key(root)}.npz"
    fingerprint = _fingerprint(files)
    with folder_lock(cache.parent):  # the jobs of a parallel sweep: one decodes, the rest wait
        arrays = _read_cache(cache, fingerprint)
        if arrays is None:
            decoded = {split: _decode(files[split], classes) for split in ("train", "test")}
            colour = any(image.ndim == 3 for images, _ in decoded.values() for image in images)
            arrays = {}
            for split, (images, labels) in decoded.items():
                arrays[f"{split}_x"], arrays[f"{split}_y"] = _stack(images, colour), labels
            _write_cache(cache, fingerprint, arrays)
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise DataError(f"{root}: train images are {arrays['train_x'].shape[1:]} but test images {arrays['test_x'].shape[1:]}")
    return (torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"]),
            torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"]), classes)


def _list_split(root: Path, split: str) -> dict:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{root} has no {split}/ folder: expected {split}/<class>/*.png|jpg")
    files = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(_image_file(root, p) for p in class_dir.iterdir() if p.suffix.lower() in EXTENSIONS)
        if images:
            files[class_dir.name] = images
    if not files:
        raise DataError(f"{folder} has no <class>/ folders with .png or .jpg images")
    return files


def _image_file(root: Path, path: Path) -> Path:
    """`path` if it is a regular file inside root, after following any symlink."""
    real = Path(os.path.realpath(path))  # a symlink loop too: its stat then says so
    if not real.is_relative_to(root):
        raise DataError(f"{path} links to {real}, outside data.root={root}: copy the image into the folder")
    kind = _kind(real)
    if kind != "file":
        raise DataError(f"{path} is {kind}, not an image file: move it out of the image folder")
    return path


def _kind(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a special file (socket or device)"


def _decode(files: dict, classes: list):
    """([uint8 (H, W) for a grayscale image, (H, W, 3) for a colour one], int64 labels)."""
    from PIL import Image

    images, labels, size = [], [], None
    for label, name in enumerate(classes):
        for path in files.get(name, []):
            try:
                with open(path, "rb", opener=_nonblocking) as f, warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        _check_size(path, im.size, size)  # from the header: nothing decoded yet
                        size = im.size
                        array = np.asarray(im.convert("L" if im.mode in GRAYSCALE_MODES else "RGB"))
            except Image.UnidentifiedImageError:
                raise DataError(f"{path} is not an image Pillow can read (png, jpg, bmp): replace it") from None
            except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise DataError(f"cannot decode image {path}: {e}") from None
            images.append(array)
            labels.append(label)
    return images, np.asarray(labels, dtype=np.int64)


def _nonblocking(path, flags):
    """A FIFO swapped in since the listing then fails to read instead of waiting for a writer."""
    return os.open(path, flags | os.O_NONBLOCK)


def _check_size(path: Path, size: tuple, first: tuple | None) -> None:
    """(width, height) from the image's header, against the first image's and MAX_SIDE."""
    if max(size) > MAX_SIDE:
        raise DataError(f"{path} is {size[0]}x{size[1]}: images may be at most {MAX_SIDE}x{MAX_SIDE} pixels; "
                        "resize them")
    if first is not None and size != first:
        raise DataError(f"{path} is {size[0]}x{size[1]}, but other images are {first[0]}x{first[1]}: resize them "
                        "to one size")


def _stack(images: list, colour: bool) -> np.ndarray:
    """(N, C, H, W) uint8: three channels if any image of the dataset has colour, else one."""
    if colour:
        images = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in images]
        return np.stack(images).transpose(0, 3, 1, 2).copy()
    return np.stack(images)[:, None]


def _key(root: Path) -> str:
    return hashlib.sha1(str(root).encode()).hexdigest()[:12]


def _fingerprint(files: dict) -> str:
    """Changes when any image is added, removed, renamed, resized on disk or touched."""
    digest = hashlib.sha1()
    for split in sorted(files):
        for name in sorted(files[split]):
            for path in files[split][name]:
                info = path.stat()
                digest.update(f"{split}/{name}/{path.name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(cache: Path, fingerprint: str):
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as data:
            if str(data["fingerprint"]) != fingerprint:
                return None
            return {k: data[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, ValueError, KeyError):
        return None  # unreadable cache: decode again


def _write_cache(cache: Path, fingerprint: str, arrays: dict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=cache.name + ".", suffix=".tmp", dir=cache.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, fingerprint=np.asarray(fingerprint), **arrays)
        os.replace(tmp, cache)
        log.info("cached decoded images in %s", cache)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
