"""V-Warper under diffusers' context parallelism: a tiny Wan (diffusers' plan) and a tiny CogVideoX (ours) on 2
CPU processes (torchrun, gloo, Ulysses degree 2) give the one-process video, flows and masks; the bytes they
move are those `cost_comm.py` counts; what cannot run under it is refused clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import vwarper_hooks as vwarper
from vwarper_hooks.contract.plan import StepPlan
from vwarper_hooks.contract.sharding import TokenShards, sharding_problems
from vwarper_hooks.porting.tiny import TINY_TEXT_LEN

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))
sys.path.insert(0, str(HERE))

import context_parallel_worker as worker  # noqa: E402
from cost_comm import Geometry, run_bytes  # noqa: E402

diffusers = pytest.importorskip("diffusers")
needs_cp = pytest.mark.skipif(
    not hasattr(diffusers, "ContextParallelConfig") or not torch.distributed.is_available()
    or not torch.distributed.is_gloo_available(),
    reason="diffusers before 0.36 has no ContextParallelConfig (or torch has no gloo backend)",
)
RANKS = 2
TIMEOUT = 600


def _launch(out: Path, ranks: int, family: str) -> None:
    script = [str(HERE / "context_parallel_worker.py"), str(out), "--family", family]
    if ranks == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                   *script, "--ulysses", str(ranks)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


#: each family's tiny model as `cost_comm.Geometry` (float32): Wan runs diffusers' own plan, CogVideoX ours
GEOMETRY = {
    "wan": Geometry("tiny Wan", tokens=32, heads=worker.HEADS, head_dim=worker.HEAD_DIM["wan"], depth=worker.LAYERS,
                    act_bytes=4),
    "cogvideox": Geometry("tiny CogVideoX", tokens=32, heads=worker.HEADS, head_dim=worker.HEAD_DIM["cogvideox"],
                          depth=worker.LAYERS, calls_per_step=1, batch=2, act_bytes=4, text_tokens=TINY_TEXT_LEN,
                          stock_parallel=False, rope_split=False),
}


@pytest.fixture(scope="module", params=sorted(GEOMETRY))
def runs(request, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(f"context_parallel_{request.param}")
    _launch(root / "one", 1, request.param)
    _launch(root / "cp", RANKS, request.param)
    yield {"one": root / "one", "cp": root / "cp", "family": request.param}
    shutil.rmtree(root, ignore_errors=True)


def _tensors(folder: Path, rank: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / f"rank{rank}.safetensors")


@needs_cp
def test_the_video_under_ulysses_equals_the_one_process_video(runs):
    one = _tensors(runs["one"], 0)
    assert (one["cold"] - one["stock"]).abs().max() > 1e-3  # V-Warper changed this video
    for rank in range(RANKS):
        ranked = _tensors(runs["cp"], rank)
        for name in ("stock", "cold", "warm"):
            torch.testing.assert_close(ranked[name], one[name], rtol=1e-5, atol=1e-5, msg=f"{name}, rank {rank}")
        assert torch.equal(ranked["after"], ranked["stock"])  # stock again after the block, still split


@needs_cp
def test_flows_and_masks_under_ulysses_equal_the_one_process_ones(runs):
    one = _tensors(runs["one"], 0)
    steps = sorted({int(k.split(".")[1]) for k in one if k.startswith("flow.")})
    assert steps == list(range(*worker.CONFIG["warp_steps"])) + [worker.CONFIG["warp_steps"][1]]
    assert sum(one[f"mask.{s}"].sum() for s in steps) > 0  # some tokens were warped
    for rank in range(RANKS):
        ranked = _tensors(runs["cp"], rank)
        assert ranked.keys() == one.keys()
        for step in steps:
            for name in ("flow", "fg_mask", "cc_mask", "mask"):
                assert torch.equal(ranked[f"{name}.{step}"], one[f"{name}.{step}"]), (name, step, rank)
            torch.testing.assert_close(ranked[f"fg_score.{step}"], one[f"fg_score.{step}"], rtol=0, atol=1e-3)


@needs_cp
def test_the_bytes_moved_are_those_the_cost_model_counts(runs):
    tiny = GEOMETRY[runs["family"]]
    plan = StepPlan.build(vwarper.WarpConfig(**worker.CONFIG), worker.STEPS, worker.LAYERS)
    for rank in range(RANKS):
        moved = json.loads((runs["cp"] / f"rank{rank}.json").read_text())
        assert Counter(moved["stock"]) == run_bytes(tiny, None, worker.STEPS, RANKS)
        assert Counter(moved["warm"]) == run_bytes(tiny, plan, worker.STEPS, RANKS)
        assert Counter(moved["cold"]) == run_bytes(tiny, plan, worker.STEPS, RANKS, cold=True)
    assert json.loads((runs["one"] / "rank0.json").read_text())["cold"] == {}  # one process: nothing moves


class _Mesh:
    """What `TokenShards.of_config` reads of diffusers' flattened mesh, for a refusal test (no collective)."""

    def __init__(self, size: int) -> None:
        self._size = size

    def get_group(self) -> None:
        return None

    def size(self) -> int:
        return self._size

    def get_local_rank(self) -> int:
        return 0


def _fake_parallel(model, ranks: int) -> None:
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    cp = ContextParallelConfig(ulysses_degree=ranks)
    cp._flattened_mesh = _Mesh(ranks)
    model._parallel_config = ParallelConfig(context_parallel_config=cp)


@needs_cp
def test_a_family_without_it_is_refused_naming_the_ones_with_it(subject):
    from vwarper_hooks.porting.tiny_models import tiny_pipeline

    pipe = tiny_pipeline("hunyuan_video")
    _fake_parallel(pipe.transformer, 2)
    with pytest.raises(vwarper.ConfigError, match="supports for Wan and CogVideoX only"):
        with vwarper.inject(pipe, subject):
            pass


@needs_cp
def test_enabling_it_for_a_family_without_it_is_refused_and_changes_nothing():
    from diffusers import ContextParallelConfig

    from vwarper_hooks.porting.tiny_models import tiny_pipeline

    pipe = tiny_pipeline("hunyuan_video")
    before = {name: type(p) for name, p in pipe.transformer.attn_processors.items()}
    with pytest.raises(vwarper.ConfigError, match="does not yet"):
        vwarper.enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=2))
    assert {name: type(p) for name, p in pipe.transformer.attn_processors.items()} == before
    assert getattr(pipe.transformer, "_parallel_config", None) is None
    wan = worker.pipeline(1, "wan")  # 4 heads over 3 ranks: refused before diffusers needs a process group
    with pytest.raises(vwarper.ConfigError, match="heads divisible by the 3"):
        vwarper.enable_context_parallel(wan, ContextParallelConfig(ulysses_degree=3))


@needs_cp
def test_heads_the_ranks_cannot_share_out_are_refused(subject):
    pipe = worker.pipeline(1, "wan")  # 4 heads
    _fake_parallel(pipe.transformer, 3)
    with pytest.raises(vwarper.ConfigError, match="heads divisible by the 3 context-parallel ranks"):
        with vwarper.inject(pipe, subject):
            pass
    assert not vwarper.get_adapter(pipe.transformer).is_installed(pipe.transformer)


def test_the_divisibility_rules_name_what_to_change():
    shards = TokenShards(group=None, size=4, rank=0)
    assert sharding_problems(None, heads=3, tokens=5) == []
    assert sharding_problems(shards, heads=8, tokens=32) == []
    heads, tokens = sharding_problems(shards, heads=6, tokens=30)
    assert "6" in heads and "divides" in heads
    assert "30" in tokens and "num_frames" in tokens
