"""The benchmark scripts stay runnable: a short tiny-config run of each, as a user would start it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_overhead_prints_three_variants_with_ratios():
    out = _run("overhead.py", "--config", "tiny", "--steps", "4", "--rounds", "1")
    number = r"\s+([0-9.]+)"
    rows = {m[1]: m.groups()[1:] for m in re.finditer(rf"^(vanilla|cold|warm){number * 4}$", out, re.M)}
    assert set(rows) == {"vanilla", "cold", "warm"}
    assert float(rows["vanilla"][1]) == 1.0
    assert float(rows["cold"][1]) > 0 and float(rows["warm"][1]) > 0
    assert "matcher+masks extra peak" in out and "hits=1 misses=1" in out
    warps = re.search(r"warp calls per injected run: min=(\d+) max=(\d+)", out)
    assert warps and int(warps[1]) == int(warps[2]) > 0  # cold and warm runs warped, and equally


def test_coarse_memory_reports_step_time():
    out = _run("coarse_memory.py", "--config", "tiny", "--steps", "2")
    assert "seconds/step" in out and "size=pipe default" in out


@pytest.mark.parametrize("script", ["overhead.py", "coarse_memory.py"])
def test_full_config_without_gpu_says_so(script):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full config would run for real")
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--config", "full"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr
