"""diffusers' memory savers work under `inject`; step caches and context parallelism are refused, wherever found.

Each memory saver is compared with the same V-Warper settings without it: group offloading (block and
leaf level, to memory and to disk) and model CPU offload must give the very same video; layerwise
casting (float8 storage) changes the numbers by itself, so it is compared with itself, lockstep or not.
Before `model_hooks`, block-level offloading to disk gave an all-NaN video: the lockstep reference
branch, paused inside a block, read weights that the block's end hook had offloaded. Sequential CPU
offload fails in accelerate on a CPU-only machine without V-Warper too, so it is not run here (its hooks
are detected the same way).
"""

from __future__ import annotations

import logging
import warnings

import diffusers
import pytest
import torch
from diffusers.hooks import FasterCacheConfig, FirstBlockCacheConfig, apply_first_block_cache
from diffusers.hooks.pyramid_attention_broadcast import PyramidAttentionBroadcastConfig

import vwarper_hooks as vwarper
from vwarper_hooks.errors import ConfigError
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

CPU = torch.device("cpu")
CONFIG = vwarper.WarpConfig(warp_steps=(2, 4))


def _generate(pipe, subject, config=CONFIG) -> torch.Tensor:
    with vwarper.inject(pipe, subject, config):
        return pipe(**tiny_call_kwargs(num_inference_steps=6, prompt="a <clock> clock on the beach")).frames


@pytest.fixture(scope="module")
def expected(clock_image) -> torch.Tensor:
    subject = vwarper.Subject.from_images([clock_image], "<clock>", "clock")
    return _generate(tiny_cogvideox_pipeline(), subject)


OFFLOADS = {
    "block level, to disk": dict(offload_type="block_level", num_blocks_per_group=1, disk=True),
    "block level, in memory": dict(offload_type="block_level", num_blocks_per_group=2),
    "leaf level, in memory": dict(offload_type="leaf_level"),
    "leaf level, to disk": dict(offload_type="leaf_level", disk=True),
}


def _stock_or_skip(pipe, setup) -> None:
    """Apply `setup(pipe)` and run one stock call; skip where diffusers itself cannot do it on this machine."""
    try:
        setup(pipe)
        pipe(**tiny_call_kwargs(num_inference_steps=1))
    except (AttributeError, RuntimeError, ValueError) as exc:
        pytest.skip(f"diffusers {diffusers.__version__} cannot do this on a CPU-only machine without V-Warper "
                    f"either ({type(exc).__name__}: {str(exc)[:80]})")


@pytest.mark.parametrize("name", list(OFFLOADS))
def test_group_offloading_gives_the_same_video(name, subject, expected, tmp_path, caplog):
    options = dict(OFFLOADS[name])
    pipe = tiny_cogvideox_pipeline()
    if options.pop("disk", False):
        options["offload_to_disk_path"] = str(tmp_path)
    _stock_or_skip(pipe, lambda p: p.transformer.enable_group_offload(onload_device=CPU, offload_device=CPU,
                                                                     **options))
    with caplog.at_level(logging.INFO, logger="vwarper_hooks"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a non-finite output would warn
        frames = _generate(pipe, subject)
    assert torch.equal(frames, expected)
    assert "reference_lockstep off for this run: group_offloading" in caplog.text


def test_model_cpu_offload_gives_the_same_video(subject, expected):
    pipe = tiny_cogvideox_pipeline()
    _stock_or_skip(pipe, lambda p: p.enable_model_cpu_offload(device="cpu"))
    assert torch.equal(_generate(pipe, subject), expected)


def test_layerwise_casting_gives_the_same_video_as_without_lockstep(subject):
    pipe = tiny_cogvideox_pipeline()
    _stock_or_skip(pipe, lambda p: p.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                                         compute_dtype=torch.float32))
    lockstep = _generate(pipe, subject)
    assert torch.isfinite(lockstep).all()
    assert torch.equal(lockstep, _generate(pipe, subject, CONFIG.updated(reference_lockstep=False)))


def test_a_non_finite_prediction_is_never_silent(subject, monkeypatch):
    from vwarper_hooks.fine.warping import ValueWarp

    attend = ValueWarp.attend
    monkeypatch.setattr(ValueWarp, "attend", lambda self, *a: attend(self, *a) * float("nan"))
    with pytest.warns(RuntimeWarning, match="not finite"):
        _generate(tiny_cogvideox_pipeline(), subject)


def test_a_cache_applied_by_function_is_refused(subject):
    pipe = tiny_cogvideox_pipeline()
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))
    assert not pipe.transformer.is_cache_enabled  # invisible to diffusers' own flag
    with pytest.raises(ConfigError, match="fbc_leader_block_hook"), vwarper.inject(pipe, subject, CONFIG):
        pass


@pytest.mark.parametrize("cache", ["faster", "pyramid"])
def test_a_cache_enabled_inside_the_block_is_refused_at_the_run(subject, cache):
    pipe = tiny_cogvideox_pipeline()
    with vwarper.inject(pipe, subject, CONFIG):
        if cache == "faster":
            pipe.transformer.enable_cache(FasterCacheConfig(current_timestep_callback=lambda: 1000))
        else:
            pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: 1000))
        with pytest.raises(ConfigError, match="Expected no diffusers step cache"):
            pipe(**tiny_call_kwargs(num_inference_steps=6, prompt="a <clock> clock on the beach"))
        pipe.transformer.disable_cache()


def test_cogvideox_under_context_parallelism_on_the_stock_processor_is_refused(subject):
    """enable_parallelism without our processor: the stock one would attend to this rank's tokens only."""
    parallel = pytest.importorskip("diffusers.models._modeling_parallel", reason="context parallelism: diffusers 0.36+")
    from diffusers import ContextParallelConfig

    ParallelConfig = parallel.ParallelConfig  # noqa: N806

    pipe = tiny_cogvideox_pipeline()
    # what enable_parallelism(config=ContextParallelConfig(...)) records on the model (it needs 2+ processes)
    pipe.transformer._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))
    with pytest.raises(ConfigError, match="enable_context_parallel"), vwarper.inject(pipe, subject, CONFIG):
        pass
