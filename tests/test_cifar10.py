"""The CIFAR-10 reader on files in the canonical pickle format, and the downloader against a
real HTTP server on 127.0.0.1."""

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from conftest import run_cli
from harness.data.cifar10 import ensure_cifar10, read_cifar10
from harness.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_canonical_cifar10(folder, per_batch=6, seed=0):
    """cifar-10-batches-py as the original release writes it: pickled dicts with bytes keys,
    b'data' a (N, 3072) uint8 array in channel-major (R plane, G plane, B plane) order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return batches


def test_reader_decodes_the_canonical_format(tmp_path):
    batches = write_canonical_cifar10(tmp_path / "cifar-10-batches-py")
    train_x, train_y, test_x, test_y, classes = read_cifar10(tmp_path / "cifar-10-batches-py")
    assert classes == CLASSES
    assert train_x.shape == (30, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (6, 3, 32, 32)
    # image 7 is the second image of data_batch_2; pixel (row 5, col 9) of the green plane
    # sits at offset 1024 + 5 * 32 + 9 of its row in the file
    raw = batches["data_batch_2"][b"data"][1]
    assert train_x[7, 1, 5, 9].item() == raw[1024 + 5 * 32 + 9]
    assert train_x[7, 2, 31, 0].item() == raw[2048 + 31 * 32]
    assert train_y[7].item() == batches["data_batch_2"][b"labels"][1]
    assert test_y.tolist() == batches["test_batch"][b"labels"]


def _tarball(tmp_path):
    src = tmp_path / "src"
    write_canonical_cifar10(src / "cifar-10-batches-py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_extracts(tmp_path, http_server):
    www, base = http_server
    data = _tarball(tmp_path)
    (www / "cifar-10-python.tar.gz").write_bytes(data)
    root = tmp_path / "data"
    folder = ensure_cifar10(root, f"{base}/cifar-10-python.tar.gz", hashlib.md5(data).hexdigest(), download=True)
    assert folder == root / "cifar-10-batches-py"
    assert (root / "cifar-10-python.tar.gz").read_bytes() == data
    assert read_cifar10(folder)[0].shape == (30, 3, 32, 32)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path, http_server):
    www, base = http_server
    (www / "cifar-10-python.tar.gz").write_bytes(_tarball(tmp_path))
    root = tmp_path / "data"
    with pytest.raises(DataError, match="MD5 .* expected 0123456789abcdef0123456789abcdef"):
        ensure_cifar10(root, f"{base}/cifar-10-python.tar.gz", "0123456789abcdef0123456789abcdef", download=True)
    assert list(root.iterdir()) == []


def test_unreachable_or_missing_file_says_where_to_put_it(tmp_path, http_server):
    _, base = http_server
    root = tmp_path / "data"
    with pytest.raises(DataError) as error:
        ensure_cifar10(root, f"{base}/nothing-here.tar.gz", "0" * 32, download=True)
    message = str(error.value)
    assert str(root) in message and "cifar-10-python.tar.gz" in message
    assert "offline, data=synthetic (generated images) or data=imagefolder data.root=DIR" in message
    assert "\n" not in message
    assert not root.exists() or list(root.iterdir()) == []
    with pytest.raises(DataError, match="downloads are off"):
        ensure_cifar10(root, f"{base}/x", "0" * 32, download=False)


def test_a_sweep_tries_a_failed_download_once_and_each_job_says_why(runs_dir, tmp_path):
    """Offline, the second job of a sweep fails at once with the first job's reason instead of
    trying the server again (on a dead network, waiting out its timeout)."""
    requested = []

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    try:
        result = run_cli("-m", "trainer.seed=0,1", "trainer=smoke", "model.depth=8", "data=cifar10",
                         f"data.root={tmp_path / 'cifar'}", f"data.url={url}", runs_dir=runs_dir, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1, result.stderr  # a sweep's own status: some job failed
    assert requested == ["/cifar-10-python.tar.gz"]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error: CIFAR-10 not found" in line]
    assert len(errors) == 2 and all("HTTP Error 404" in line for line in errors), errors
    assert "not retried" not in errors[0] and "failed earlier in this sweep, not retried" in errors[1]


def test_existing_archive_with_wrong_checksum_is_refused(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="delete it"):
        ensure_cifar10(root, "http://127.0.0.1:9/x", "0" * 32, download=True)
    assert not (root / "cifar-10-batches-py").exists()


class RunsAShellCommand:
    """What a crafted data_batch_1 carries: unpickling it would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_crafted_batch_file_is_refused_not_run(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_canonical_cifar10(folder)
    marker = tmp_path / "it-ran"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": RunsAShellCommand(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="data_batch_1.*asks for posix.system"):
        read_cifar10(folder)
    assert not marker.exists()
