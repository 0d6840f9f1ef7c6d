"""Every write can fail: a job whose folder fills up (a real tmpfs, filled at a chosen write)
stops with one line and a KILLED run, leaves no temporary, and resumes bit-identical once there
is room; a cut or damaged metric journal and an unreadable checkpoint do not strand a job.
The MLflow store stays on the ordinary disk: only the job's own files run out of space."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import local_store, run_cli
from test_resilience import SMALL, harness_runs, histories, job_runs, launch, wait_for, weights

pytestmark = pytest.mark.slow

# SMALL made shorter: 32 steps an epoch (1024 training images, batch 32), two epochs
TINY = [o for o in SMALL if not o.startswith("data.train_size=")] + ["data.train_size=1536"]
FILLER = "filler"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job, never interrupted."""
    runs_dir = tmp_path_factory.mktemp("reference") / "runs"
    result = run_cli(*TINY, runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    uri = local_store(runs_dir)
    client, (run,), _ = job_runs(uri)
    return uri, client, run


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs on a temporary folder; skipped where this process cannot mount one."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Take all the free space of `disk` but `leave` bytes."""
    stat = os.statvfs(disk)
    fd = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize - leave)
    finally:
        os.close(fd)


# when the disk fills: once the job is training, leaving room for the first epoch's metric journal
# (about 30 KB) but not its checkpoint (about 650 KB); leaving one page, so that the journal is cut
# mid-line; once the first checkpoint exists, leaving room for the second epoch but not the model's
# weights at the end
CASES = {"checkpoint": ("job.json", 256 * 1024, "checkpoint.pt"),
         "journal": ("job.json", 4096, "metrics_unsent.jsonl"),
         "weights": ("checkpoint.pt", 64 * 1024, "model_weights.pt")}


@pytest.mark.parametrize("case", CASES)
def test_a_full_disk_ends_the_run_killed_in_one_line_and_resume_finishes_it(reference, small_disk, tmp_path, case):
    ref_uri, ref_client, ref_run = reference
    after, leave, failing = CASES[case]
    uri = local_store(tmp_path / "store")
    process = launch(*TINY, runs_dir=small_disk / "runs", uri=uri)
    wait_for(lambda: list(small_disk.glob(f"runs/hydra/*/*/{after}")) or process.poll() is not None, timeout=300, what=after)
    fill(small_disk, leave)
    output = process.communicate(timeout=600)[0]
    job = next(small_disk.glob("runs/hydra/*/*"))

    assert process.returncode == 1, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"cannot write {job / failing}: No space left on device (ENOSPC)" in errors[0], output
    assert "Traceback" not in output and "MLflow store failed" not in output
    assert not list(job.glob("*.tmp")) and not list(job.glob(".*.tmp"))
    journal = job / "metrics_unsent.jsonl"
    if journal.exists():  # what a full disk cut off was taken back: only whole points are kept
        assert journal.read_bytes() == b"" or journal.read_bytes().endswith(b"\n")
        [json.loads(line) for line in journal.read_text().splitlines()]
    client, (run,), _ = job_runs(uri)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "killed"
    assert run.data.tags["killed_by"] == f"cannot write {job / failing}: No space left on device (ENOSPC)"

    (small_disk / FILLER).unlink()
    if case == "journal":  # and as a crash mid-write leaves it: a last line cut mid-record
        with open(journal, "a") as f:
            f.write('["weight_norm/001_stem.bn", 3.994119644165039,')
    resumed = harness_runs("resume", str(job))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    if case == "journal":
        assert "metrics_unsent.jsonl line 1: cut short, left out" in resumed.stderr

    client, (run,), _ = job_runs(uri)
    assert run.info.status == "FINISHED" and not {"error", "killed_by"} & set(run.data.tags)
    # every point once, and the same as the run never interrupted
    assert histories(client, run) == histories(ref_client, ref_run)
    mine, theirs = weights(uri, run), weights(ref_uri, ref_run)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not list(job.glob("*.tmp")) and not (job / "checkpoint.pt").exists()


def test_sync_sends_every_whole_line_of_a_damaged_journal(runs_dir):
    """A line damaged in the middle and a last line cut mid-record are each left out with a
    note naming the line; every other point reaches the store."""
    assert run_cli("data=synthetic", "trainer=smoke", "model.depth=8", runs_dir=runs_dir).returncode == 0
    job = next(runs_dir.glob("hydra/*/*"))
    points = [["kept/a", 0.5 * step, step, 1_700_000_000_000 + step] for step in range(1, 6)]
    lines = [json.dumps(p) for p in points]
    lines.insert(2, '["kept/a", "not a number", 9, 0]')
    (job / "metrics_unsent.jsonl").write_text("\n".join(lines) + '\n["kept/a", 3.99411964')

    synced = harness_runs("sync", str(job))
    assert synced.returncode == 0, synced.stderr
    assert "sent 5 kept metric points" in synced.stdout and "Traceback" not in synced.stderr
    notes = synced.stderr.strip().splitlines()
    assert len(notes) == 2 and "line 3: not a metric point" in notes[0] and "line 7: cut short" in notes[1], notes
    client, (run,), _ = job_runs(local_store(runs_dir))
    history = client.get_metric_history(run.info.run_id, "kept/a")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [tuple(p[2:0:-1]) + (p[3],) for p in points]
    assert not (job / "metrics_unsent.jsonl").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_an_unreadable_checkpoint_is_set_aside_and_the_job_starts_again(reference, runs_dir, damage):
    """Into the same run, from step 0: the points the store already has are not sent again."""
    ref_uri, ref_client, ref_run = reference
    uri = local_store(runs_dir)
    process = launch(*TINY, runs_dir=runs_dir, uri=uri)
    checkpoint = lambda: list(runs_dir.glob("hydra/*/*/checkpoint.pt"))  # noqa: E731
    wait_for(lambda: checkpoint() or process.poll() is not None, timeout=300, what="the first checkpoint")
    process.kill()
    process.communicate(timeout=60)
    (path,) = checkpoint()
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[:len(data) // 2])

    resumed = harness_runs("resume", str(path.parent))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if "cannot be read" in line]
    assert len(warnings) == 1 and "set aside as checkpoint.pt.corrupt" in warnings[0], resumed.stderr
    assert len((path.parent / "checkpoint.pt.corrupt").read_bytes()) == (0 if damage == "empty" else len(data) // 2)
    client, (run,), _ = job_runs(uri)
    assert run.info.status == "FINISHED"
    assert histories(client, run) == histories(ref_client, ref_run)
    mine, theirs = weights(uri, run), weights(ref_uri, ref_run)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_a_checkpoint_that_names_code_is_refused_and_a_damaged_one_never_overwrites_another(tmp_path):
    import pickle

    from harness.jobs.checkpoint import Checkpoints
    from harness.errors import HarnessError

    class Payload:
        def __reduce__(self):
            return os.system, ("touch " + str(tmp_path / "ran"),)

    checkpoints = Checkpoints(tmp_path, every=1, run_id="r")
    torch.save({"x": Payload()}, checkpoints.path)
    with pytest.raises(HarnessError, match="names code to run.*posix.system"):
        checkpoints.load()
    assert checkpoints.path.is_file() and not (tmp_path / "ran").exists()

    for n in range(2):
        checkpoints.path.write_bytes(pickle.dumps(n))  # loads, but is no checkpoint
        assert checkpoints.load() is None and not checkpoints.path.exists()
    assert pickle.loads((tmp_path / "checkpoint.pt.corrupt").read_bytes()) == 0
    assert pickle.loads((tmp_path / "checkpoint.pt.corrupt.2").read_bytes()) == 1
