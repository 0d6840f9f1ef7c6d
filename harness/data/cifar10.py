"""CIFAR-10 in its canonical python format (`cifar-10-batches-py`), downloaded when missing.

The archive is fetched with a progress bar into a temporary file beside its destination,
checked against its MD5 and only then moved into place; extraction likewise goes through a
temporary folder, so an interrupted or corrupt download leaves nothing behind.
"""

import hashlib
import logging
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from harness.data import DataSource
from harness.errors import DataError
from harness.files import folder_lock

log = logging.getLogger(__name__)

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"

# url -> why its download failed: the jobs a sweep runs in this process (one after another, or a
# joblib worker's share) try a download that failed once only, instead of waiting out each time
_FAILED_DOWNLOADS: dict[str, str] = {}


class Cifar10(DataSource):
    """root holds `cifar-10-batches-py/` or `cifar-10-python.tar.gz`; otherwise the archive is
    downloaded from url (if download) and checked against md5."""

    IMAGE_SIZE = 32
    TRAIN_SIZE = 50_000

    def __init__(self, root: str, url: str, md5: str, download: bool = True, **split):
        super().__init__(**split)
        self.root, self.url, self.md5, self.download = Path(root), url, md5, download

    def read(self):
        return read_cifar10(ensure_cifar10(self.root, self.url, self.md5, self.download))


def read_cifar10(folder: Path):
    """(train_x, train_y, test_x, test_y, classes) from a `cifar-10-batches-py` folder."""
    train = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = _read_batch(folder / TEST_BATCH)
    meta = _unpickle(folder / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta[b"label_names"]]
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    return train_x, train_y, test_x, test_y, classes


def _read_batch(path: Path):
    batch = _unpickle(path)
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected a (N, 3072) uint8 array under b'data', got shape {data.shape}")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    y = torch.as_tensor(batch[b"labels"], dtype=torch.int64)
    return x, y


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's batches are dicts of bytes, ints, lists and one numpy array: anything else a
    pickle asks for (os.system, say, in a crafted file) is refused, not called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"cannot read CIFAR-10 file {path}: {e}") from None


def ensure_cifar10(root: Path, url: str, md5: str, download: bool) -> Path:
    """The `cifar-10-batches-py` folder under root, downloading and extracting it if needed."""
    folder = root / FOLDER
    if folder.is_dir():
        return folder
    if not download and not (root / ARCHIVE).is_file():
        raise DataError(_missing_message(root, "downloads are off"))
    with folder_lock(root):  # the jobs of a parallel sweep: one downloads, the rest wait
        if not folder.is_dir():
            _download_and_extract(root, url, md5)
    return folder


def _download_and_extract(root: Path, url: str, md5: str) -> None:
    archive = root / ARCHIVE
    if not archive.is_file():
        if url in _FAILED_DOWNLOADS:
            raise DataError(_missing_message(root, f"download from {url} failed earlier in this sweep, not retried: "
                                                   f"{_FAILED_DOWNLOADS[url]}"))
        try:
            download_file(url, archive, md5)
        except OSError as e:  # URLError and socket errors are OSErrors
            _FAILED_DOWNLOADS[url] = str(e)
            raise DataError(_missing_message(root, f"download from {url} failed: {e}")) from None
    elif file_md5(archive) != md5:
        raise DataError(f"{archive} has MD5 {file_md5(archive)}, expected {md5}: delete it and run again")
    extract(archive, root)


def _missing_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 not found in {root} ({reason}): put {ARCHIVE} or its extracted {FOLDER}/ there; "
        "offline, data=synthetic (generated images) or data=imagefolder data.root=DIR (DIR/train/<class>/*.png)"
    )


def download_file(url: str, dest: Path, md5: str, chunk: int = 1 << 20) -> None:
    """Fetch url to dest atomically; raise DataError and leave nothing if the MD5 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, dest)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(chunk):
                out.write(block)
                digest.update(block)
                done += len(block)
                _progress(f"downloading {dest.name}", done, total)
        _progress_end()
        if digest.hexdigest() != md5:
            raise DataError(f"download from {url} has MD5 {digest.hexdigest()}, expected {md5}; nothing was kept")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def extract(archive: Path, root: Path) -> None:
    """Unpack the archive's `cifar-10-batches-py/` into root, all or nothing."""
    log.info("extracting %s", archive)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tar.extractall(tmp, filter="data")
            else:
                _check_members(tar, archive)
                tar.extractall(tmp)
        if not (tmp / FOLDER).is_dir():
            raise DataError(f"{archive} does not contain {FOLDER}/")
        os.replace(tmp / FOLDER, root / FOLDER)
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"{archive} is not a readable tar.gz archive ({e}): delete it and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_members(tar: tarfile.TarFile, archive: Path) -> None:
    """What the "data" extraction filter refuses: paths leaving the folder, links, devices."""
    for member in tar.getmembers():
        path = Path(member.name)
        if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
            raise DataError(f"{archive} has an unsafe member {member.name!r}: delete it and run again")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _progress(label: str, done: int, total: int) -> None:
    if not sys.stderr.isatty():
        return
    if total:
        filled = int(30 * done / total)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done / 2**20:.1f}/{total / 2**20:.1f} MiB")
    else:
        sys.stderr.write(f"\r{label} {done / 2**20:.1f} MiB")
    sys.stderr.flush()


def _progress_end() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")
