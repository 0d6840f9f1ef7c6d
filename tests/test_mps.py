"""A sweep's MPS daemon (harness.jobs.mps): none on a CPU; on a CUDA device, started once, joined when
one answers, stopped at the end, on SIGTERM and after failed jobs, never someone else's.

No GPU and no `nvidia-cuda-mps-control` exist here, so a stand-in (FAKE below) is put first on
PATH: it records its calls and behaves as the daemon does for the harness (`-d` forks a daemon
and returns; a client reads commands on stdin, fails when no daemon answers, and `quit` ends the
daemon). Sweeps on a CUDA device are declared with trainer.device=cuda: the sweep starts the
daemon, and each job, having no GPU, fails in one line, as a job that fails on a GPU would.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.jobs import mps

from conftest import SYNTHETIC, ForkedProcess, all_runs, local_store, run_cli

FAKE = r"""#!/bin/bash
# a stand-in for nvidia-cuda-mps-control: calls are appended to $FAKE_MPS_CALLS
pipe=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}
case "${1:-}" in
  -d)
    echo "start $pipe" >> "$FAKE_MPS_CALLS"
    if [ -n "${FAKE_MPS_REFUSE:-}" ]; then echo "$FAKE_MPS_REFUSE" >&2; exit 1; fi
    mkdir -p "$pipe" && rm -f "$pipe/quit"
    nohup "$0" --serve > /dev/null 2>&1 &
    echo $! > "$pipe/daemon.pid"
    ;;
  --serve)
    while [ ! -e "$pipe/quit" ]; do sleep 0.05; done
    rm -f "$pipe/quit" "$pipe/daemon.pid"
    ;;
  *)
    pid=$(cat "$pipe/daemon.pid" 2>/dev/null)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "Cannot find MPS control daemon process" >&2; exit 1
    fi
    while read -r command; do
      if [ "$command" = quit ]; then echo "quit $pipe" >> "$FAKE_MPS_CALLS"; touch "$pipe/quit"; fi
    done
    ;;
esac
"""

CUDA_SWEEP = ["-m", "model.depth=8,14", *SYNTHETIC, "trainer=smoke",
              "trainer.device=cuda", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


@pytest.fixture
def fake(tmp_path):
    """(environment with the stand-in first on PATH, its calls file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / mps.CONTROL).write_text(FAKE)
    (bin_dir / mps.CONTROL).chmod(0o755)
    calls = tmp_path / "calls"
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_MPS_CALLS": str(calls)}, calls


def calls_of(calls: Path) -> list:
    return calls.read_text().splitlines() if calls.exists() else []


def mps_processes() -> list:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if b"nvidia-cuda-mps" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def sweep_folder(runs_dir: Path) -> Path:
    (folder,) = runs_dir.glob("multirun/*/*")
    return folder


def tags_by_kind(runs_dir: Path) -> tuple:
    """(the parent run's mps tag, the jobs' mps tags)."""
    _, runs = all_runs(local_store(runs_dir))
    parent = [r.data.tags.get(mps.TAG) for r in runs if r.data.tags.get("kind") == "sweep"]
    jobs = sorted(r.data.tags.get(mps.TAG) for r in runs if r.data.tags.get("kind") != "sweep")
    return parent, jobs


def test_a_sweep_on_the_cpu_starts_no_daemon(runs_dir, fake):
    env, calls = fake
    result = run_cli("-m", "model.depth=8,14", *SYNTHETIC, "trainer=smoke",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", runs_dir=runs_dir,
                     env=env)  # trainer.device=auto, no GPU
    assert result.returncode == 0, result.stderr[-3000:]
    assert calls_of(calls) == []
    assert not (sweep_folder(runs_dir) / mps.FOLDER).exists() and not list(Path("/tmp").glob("harness-mps-*"))
    assert tags_by_kind(runs_dir) == (["not needed"], ["off", "off"])  # no variable reached a job
    assert "MPS" not in result.stdout + result.stderr


def test_a_cuda_sweep_starts_one_daemon_for_its_jobs_and_stops_it_after_they_fail(runs_dir, fake):
    env, calls = fake
    result = run_cli(*CUDA_SWEEP, runs_dir=runs_dir, env=env)
    assert result.returncode == 1, result.stderr[-3000:]  # both jobs failed: no CUDA device here
    assert result.stderr.count("no CUDA device is available") == 2
    pipe, _ = mps.folders(sweep_folder(runs_dir))  # in /tmp: pytest's folders are deep
    assert calls_of(calls) == [f"start {pipe}", f"quit {pipe}"], result.stderr[-3000:]
    assert tags_by_kind(runs_dir) == (["started"], [str(pipe), str(pipe)])  # both workers were its clients
    assert (sweep_folder(runs_dir) / mps.FOLDER / "log").is_dir()
    assert mps.daemon_pids(pipe) == [] and not mps.answers(pipe)


def test_a_sweep_stopped_by_sigterm_stops_its_daemon(runs_dir, fake):
    env, calls = fake
    sweep = ForkedProcess("harness", *CUDA_SWEEP, "model.residual=true,false", "trainer.seed=0,1",  # 8 jobs, 2 at once
                          f"paths.runs={runs_dir}", f"tracking.uri={local_store(runs_dir)}", env=env)
    deadline = time.monotonic() + 120
    while not calls_of(calls) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert calls_of(calls), "the sweep did not start its daemon"
    assert sweep.poll() is None
    sweep.send_signal(signal.SIGTERM)
    output = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 128 + signal.SIGTERM, output[-3000:]
    pipe, _ = mps.folders(sweep_folder(runs_dir))
    assert calls_of(calls) == [f"start {pipe}", f"quit {pipe}"]
    assert mps.daemon_pids(pipe) == []


def test_a_sweep_joins_a_daemon_that_answers_and_leaves_it_running(runs_dir, fake, tmp_path, monkeypatch):
    env, calls = fake
    monkeypatch.setenv("PATH", env["PATH"])  # for mps.answers here
    theirs = tmp_path / "their-mps"
    env = {**env, mps.PIPE_ENV: str(theirs)}
    subprocess.run([mps.CONTROL, "-d"], env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
    try:
        result = run_cli(*CUDA_SWEEP, runs_dir=runs_dir, env=env)
        assert result.returncode == 1, result.stderr[-3000:]
        assert calls_of(calls) == [f"start {theirs}"]  # the test's own start; no quit
        assert tags_by_kind(runs_dir) == (["joined"], [str(theirs), str(theirs)])
        assert not (sweep_folder(runs_dir) / mps.FOLDER).exists()
        assert mps.answers(theirs)
    finally:
        subprocess.run([mps.CONTROL], input="quit\n", text=True, env={**os.environ, **env})


@pytest.mark.parametrize("case", ["no binary", "refused"])
def test_where_mps_cannot_start_the_sweep_says_so_once_and_runs_time_sliced(runs_dir, fake, case):
    env, calls = fake
    if case == "no binary":
        env = {"PATH": os.environ["PATH"]}
        expected = f"MPS: {mps.CONTROL} is not on PATH: the sweep's jobs share the GPU time-sliced"
    else:
        env = {**env, "FAKE_MPS_REFUSE": "operation not permitted in this container"}
        expected = (f"MPS: {mps.CONTROL} -d exited with status 1 (operation not permitted in this container): "
                    "the sweep's jobs share the GPU time-sliced")
    result = run_cli(*CUDA_SWEEP, runs_dir=runs_dir, env=env)
    assert result.returncode == 1, result.stderr[-3000:]  # the jobs ran, and failed for want of a GPU
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "MPS" in line]  # Hydra logs to stdout
    assert len(lines) == 1 and lines[0].endswith(expected), lines
    assert tags_by_kind(runs_dir) == (["unavailable"], ["off", "off"])
    assert mps_processes() == []  # the refused start left nothing behind


def test_trainer_mps_off_starts_no_daemon_and_a_bad_value_is_one_line(runs_dir, fake):
    env, calls = fake
    result = run_cli(*CUDA_SWEEP, "trainer.mps=off", runs_dir=runs_dir, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert calls_of(calls) == [] and tags_by_kind(runs_dir) == (["off"], ["off", "off"])
    bad = run_cli("data=synthetic", "trainer=smoke", "trainer.mps=maybe", runs_dir=runs_dir, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "trainer.mps" in bad.stderr and "maybe" in bad.stderr and "off" in bad.stderr


def test_a_deep_sweep_folder_gets_a_short_pipe_in_tmp_removed_at_the_stop(tmp_path, fake, monkeypatch):
    env, calls = fake
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(mps.PIPE_ENV, raising=False)
    sweep_dir = tmp_path / ("deep" * 20) / "2026-12-02" / "19-40-00-abcdef"
    pipe, logs = mps.folders(sweep_dir)
    assert pipe.parent == Path("/tmp") and len(str(pipe) + "/control") < 107 and logs.is_relative_to(sweep_dir)
    daemon = mps.Daemon.join_or_start(sweep_dir)
    try:
        assert daemon.owned and daemon.pipe == pipe and os.environ[mps.PIPE_ENV] == str(pipe) and mps.answers(pipe)
    finally:
        daemon.stop()
    assert calls_of(calls) == [f"start {pipe}", f"quit {pipe}"]
    assert not pipe.exists() and mps.PIPE_ENV not in os.environ and mps.LOG_ENV not in os.environ


def test_auto_wants_mps_only_for_several_jobs_at_once_on_a_cuda_device():
    assert mps.wanted("auto", "cuda", 6)
    assert not mps.wanted("auto", "cuda", 1) and not mps.wanted("auto", "cpu", 6) and not mps.wanted("off", "cuda", 6)
