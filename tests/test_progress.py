"""What a job shows while it runs: a bar on a terminal, lines without one."""

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import torch

from harness.training.progress import LaggedValue, Progress

from conftest import PROJECT_ROOT, SYNTHETIC, local_store

SMOKE = [*SYNTHETIC, "trainer=smoke", "model.depth=8", "trainer.steps=60", "probes.shift.max=1"]


def test_rates_and_etas_are_computed_from_steps_and_time_spent_training():
    progress = Progress("job 2/6 d20 plain", total_steps=1000, steps_per_epoch=300, batch_size=10,
                        device=torch.device("cpu"))
    progress.started, progress.paused, progress.step, progress.started_at_step = 0.0, 5.0, 100, 0
    progress.loss.offer(torch.tensor(1.25))
    # 100 steps in 15 - 5 = 10 s of training: 10 steps/s, 100 img/s; 200 steps left in epoch 1, 900 in the job
    assert progress.facts(now=15.0) == ("job 2/6 d20 plain: step 100/1,000, epoch 1/4, 100 img/s, "
                                        "epoch ETA 0:20, job ETA 1:30, loss 1.2500")
    progress.step = 999
    assert "epoch 4/4" in progress.facts(now=104.9) and "epoch ETA 0:00" in progress.facts(now=104.9)


def test_lagged_value_on_a_cpu_is_the_latest():
    value = LaggedValue(torch.device("cpu"))
    assert value.value is None
    value.offer(torch.tensor(2.5))
    assert value.value == 2.5


def run_in_terminal(args, runs_dir, timeout=300, columns=120):
    """The CLI with stdin/stdout/stderr on a pseudo-terminal of 24 x `columns`; everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    command = [sys.executable, "-m", "harness", *args, f"paths.runs={runs_dir}", f"tracking.uri={local_store(runs_dir)}"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    output, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    assert process.wait(timeout=30) == 0, output.decode(errors="replace")[-3000:]
    return output.decode(errors="replace")


def test_a_terminal_gets_a_bar_that_moves_between_log_points(tmp_path):
    output = run_in_terminal(["-m", "model.residual=true,false", *SMOKE, "trainer.log_every=30"], tmp_path / "runs")
    frames = [frame for frame in output.split("\r") if "steps [" in frame]
    counts = {int(frame.split("/60 steps")[0].split()[-1]) for frame in frames if "/60 steps" in frame}
    assert len(counts - {0, 30, 60}) >= 1  # drawn between the log points at steps 30 and 60
    assert any(frame.startswith("job 2/2 plain") for frame in frames)
    assert any("img/s, epoch ETA" in frame for frame in frames)
    assert any("loss " in frame for frame in frames)  # the first window's loss, once it is read
    for phase in ("validation on 512 images", "final test on 1,024 images", "invariance scores on 64 test images"):
        assert phase in output


def test_a_terminal_of_width_0_gets_the_lines_a_log_file_gets(tmp_path):
    """`script` to a file gives a terminal 0 columns wide: no bar can show there."""
    output = run_in_terminal([*SMOKE, "trainer.steps=200", "trainer.progress_every=0.5"], tmp_path / "runs", columns=0)
    assert "steps [" not in output
    assert len([line for line in output.splitlines() if "/200, epoch 1/" in line and "img/s" in line]) >= 2, output


def test_without_a_terminal_a_line_every_few_seconds(tmp_path):
    from conftest import run_cli

    result = run_cli(*SMOKE, "trainer.steps=200", "trainer.progress_every=0.5", runs_dir=tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "/200, epoch 1/" in line]
    assert len(lines) >= 2, result.stderr
    assert all("img/s, epoch ETA" in line and "job ETA" in line for line in lines)
    steps = [int(line.split("step ")[1].split("/")[0].replace(",", "")) for line in lines]
    assert steps == sorted(steps) and steps[-1] < 200
    assert "\r" not in result.stderr  # no bar in a log file


def test_a_split_smaller_than_the_probe_sample_is_counted_as_evaluated(tmp_path):
    """probes=smoke scores 64 test and 16 validation images; these splits have 40 and 10."""
    from mlflow.artifacts import download_artifacts

    from conftest import all_runs, run_cli

    runs_dir = tmp_path / "runs"
    result = run_cli(*SMOKE, "trainer.steps=4", "data.test_size=40", "data.val_size=10", "trainer.eval_batch_size=16",
                     runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    assert "invariance scores on 40 test images" in result.stderr, result.stderr
    assert "validation on 10 images" in result.stderr and "invariance scores on 10 validation images" in result.stderr
    _, (run,) = all_runs(local_store(runs_dir))
    sample = download_artifacts(run_id=run.info.run_id, artifact_path="shift_sample.csv",
                                tracking_uri=local_store(runs_dir))
    splits = [line.split(",")[0] for line in open(sample).read().splitlines()[1:]]
    assert (splits.count("test"), splits.count("val")) == (40, 10)  # the images actually scored
