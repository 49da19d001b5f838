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


def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    import json

    out = _run("gpu_check.py", "--dry-run", "--out", str(tmp_path / "dry.json"), "--steps", "5",
               "--lora-steps", "1", "--rank", "2")
    report = json.loads((tmp_path / "dry.json").read_text())
    assert report["errors"] == {} and report["dry_run"] and report["warp_steps"] == [1, 2]
    assert set(report["variants"]) == {"plain", "cold", "warm", "fill feature cache", "cached"}
    assert all(v["peak_bytes"] > 0 and v["seconds"] > 0 for v in report["variants"].values())
    assert report["syncs"] == {"skipped": "no CUDA"} and "train_subject_seconds" in report
    assert "written to" in out


def test_without_a_gpu_the_gpu_check_says_to_use_dry_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run for real")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", os.devnull],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr and "--dry-run" in done.stderr


def test_lse_kernel_prefers_flash_on_cuda_in_half_precision():
    from types import SimpleNamespace

    import torch

    from vwarper_hooks.contract.processors import lse_kernel

    def q(device: str, dtype: torch.dtype, dim: int = 64):
        return SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(1, 2, 8, dim))

    assert lse_kernel(q("cuda", torch.bfloat16), masked=False) == "flash"
    assert lse_kernel(q("cuda", torch.float16), masked=False) == "flash"
    assert lse_kernel(q("cuda", torch.bfloat16), masked=True) == "efficient"  # flash takes no mask
    assert lse_kernel(q("cuda", torch.float32), masked=False) == "efficient"
    assert lse_kernel(q("cuda", torch.bfloat16, dim=512), masked=False) == "efficient"
    assert lse_kernel(q("cpu", torch.float32), masked=True) == "flash_cpu"
    assert lse_kernel(q("meta", torch.bfloat16), masked=False) == "efficient"  # what the FLOP counter sees
