"""The benchmark runs end to end (its figures are for reading, not for asserting)."""

import re

from conftest import SYNTHETIC, all_runs, run_cli, run_module


def test_bench_prints_every_trainer_and_finds_no_host_sync():
    result = run_module("harness.bench", "--depths", "8", "--steps", "4", "--repeats", "1", "--workers", "0",
                        "--device", "cpu", timeout=600)
    assert result.returncode == 0, result.stderr
    row = re.search(r"^ResNet-8 +([\d,]+) \(.*\) +([\d,]+) \(.*\) +([\d,]+) \(.*\) +[\d.]+x +[-+][\d.]+%$",
                    result.stdout, re.M)
    assert row, result.stdout
    default, off, reference = (float(row[i].replace(",", "")) for i in (1, 2, 3))
    assert min(default, off, reference) > 0
    assert "host-device syncs inside 34 ResNet-8 training steps: none" in result.stdout


def test_timings_of_a_sweep_read_from_its_store(tmp_path):
    """.ci/gpu's study stage prints these: the span from the first job's start and, per job, its
    start-up and epochs, from the store; a store with no job says so in one line."""
    runs_dir = tmp_path / "runs"
    result = run_cli("-m", "model.depth=8,14", *SYNTHETIC, "trainer=smoke", "probes=off",
                     runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    uri = f"sqlite:///{runs_dir}/mlflow.db"
    jobs = [r for r in all_runs(uri)[1] if r.data.tags.get("kind") != "sweep"]
    span = (max(r.info.end_time for r in jobs) - min(r.info.start_time for r in jobs)) / 1000
    timings = run_module("harness.bench", "--timings", uri)
    assert timings.returncode == 0, timings.stderr
    assert f"2 jobs: first job start to last job end {span:.1f} s" in timings.stdout
    for job in jobs:
        row = next(line for line in timings.stdout.splitlines() if line.startswith(job.info.run_name + " "))
        assert row.split()[-1] == f"{job.data.metrics['test/acc']:.4f}"
    empty = run_module("harness.bench", "--timings", f"sqlite:///{tmp_path}/empty.db")
    assert empty.returncode == 0 and empty.stdout.strip() == f"no jobs in sqlite:///{tmp_path}/empty.db", empty.stderr
