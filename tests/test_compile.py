"""torch.compile under inject: regional (per block) and whole-model compilation, on CPU backends.

Stock layers stay compiled (a processor reads one router-managed flag), routed layers run eagerly
behind one graph break, and recompiles stay bounded across steps and calls: every test fails
instead of silently falling back to eager when a code object passes the recompile limit.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from PIL import Image
from torch._dynamo.utils import counters

import vwarper_hooks as vwarper
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

CONFIG = vwarper.WarpConfig(match_layer=2, warp_layers=(4, 5), warp_steps=(1, 3))


@pytest.fixture(autouse=True)
def _strict_dynamo():
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def _subject():
    return vwarper.Subject.from_images([Image.new("RGB", (32, 32), (200, 80, 40))], "<clock>", "clock")


def _run(pipe, subject):
    with vwarper.inject(pipe, subject, CONFIG) as session:
        frames = pipe(**tiny_call_kwargs(num_inference_steps=5)).frames
    return frames, sum(n for (kind, _, _), n in session.calls.items() if kind == "warp")


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_regional_compilation_under_inject(backend):
    pipe, subject = tiny_cogvideox_pipeline(num_layers=8), _subject()
    eager_out, _ = _run(pipe, subject)
    stock = pipe(**tiny_call_kwargs(num_inference_steps=5)).frames
    for block in pipe.transformer.transformer_blocks:  # what compile_repeated_blocks() does per block
        block.compile(backend=backend)
    assert torch.allclose(pipe(**tiny_call_kwargs(num_inference_steps=5)).frames, stock, atol=1e-5)
    first, warps = _run(pipe, subject)
    assert warps == 3 * 2 and torch.allclose(first, eager_out, atol=1e-5)
    graphs = _graphs()
    assert graphs <= 16  # stock and routed variants of one block, batch 2 and the reference's batch 1
    second, _ = _run(pipe, subject)
    assert _graphs() == graphs and torch.equal(second, first)  # a second call compiles nothing new
    assert torch.allclose(pipe(**tiny_call_kwargs(num_inference_steps=5)).frames, stock, atol=1e-5)


def test_whole_model_compilation_under_inject():
    pipe, subject = tiny_cogvideox_pipeline(num_layers=8), _subject()
    eager_out, _ = _run(pipe, subject)
    stock = pipe(**tiny_call_kwargs(num_inference_steps=5)).frames
    model = pipe.transformer
    pipe.transformer = torch.compile(model, backend="eager")
    try:
        assert vwarper.get_adapter(pipe.transformer).name == "cogvideox"
        first, warps = _run(pipe, subject)
        assert warps == 3 * 2 and torch.allclose(first, eager_out, atol=1e-5)
        graphs = _graphs()
        second, _ = _run(pipe, subject)
        assert _graphs() == graphs and torch.equal(second, first)
        assert isinstance(pipe.transformer, torch._dynamo.eval_frame.OptimizedModule)  # still compiled after
        assert torch.allclose(pipe(**tiny_call_kwargs(num_inference_steps=5)).frames, stock, atol=1e-5)
        assert vwarper.get_adapter(model).is_installed(model) == 0
    finally:
        pipe.transformer = model
