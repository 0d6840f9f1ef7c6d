"""The benchmark runs end to end (its figures are for reading, not for asserting)."""

import re
import subprocess
import sys

from conftest import PROJECT_ROOT


def test_bench_prints_every_trainer_and_finds_no_host_sync():
    command = [sys.executable, "-m", "harness.bench", "--depths", "8", "--steps", "4", "--repeats", "1",
               "--workers", "0", "--device", "cpu"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    row = re.search(r"^ResNet-8 +([\d,]+) \(.*\) +([\d,]+) \(.*\) +([\d,]+) \(.*\) +[\d.]+x +[-+][\d.]+%$",
                    result.stdout, re.M)
    assert row, result.stdout
    default, off, reference = (float(row[i].replace(",", "")) for i in (1, 2, 3))
    assert min(default, off, reference) > 0
    assert "host-device syncs inside 34 harness training steps: none" in result.stdout
