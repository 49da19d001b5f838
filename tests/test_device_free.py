"""The hot path reads no tensor value on the host: `inject` runs end to end on the meta device.

Meta tensors have shapes but no values, so any `.item()`, `.tolist()`, `bool(tensor)` or
device-to-host copy in the per-call path raises. Only the scheduler's arithmetic is stubbed
(stock schedulers index their tables with the timestep's value); everything else is the stock
pipeline, our hooks, the reference branch and, on the cold call, the inversion.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.testing import tiny_call_kwargs, tiny_pipeline


def _on_meta(family: str):
    pipe = tiny_pipeline(family, **({"num_layers": 14} if family == "cogvideox" else {}))
    pipe.to("meta")
    pipe.scheduler.step = lambda model_output, timestep, sample, *args, **kwargs: (sample,)  # arithmetic only
    return pipe


@pytest.mark.parametrize("family", ["cogvideox"])  # Wan's UMT5 encoder (transformers) itself reads values
def test_cold_and_warm_calls_run_on_the_meta_device(family):
    pipe = _on_meta(family)
    subject = vwarper.Subject.from_images([Image.new("RGB", (32, 32), (200, 80, 40))], "<clock>", "clock")
    config = vwarper.WarpConfig(warp_steps=(1, 3), match_layer=2, warp_layers=(3, 4))
    for _ in range(2):  # cold (inversion), then warm (cached trajectory)
        with vwarper.inject(pipe, subject, config) as session:
            out = pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent", generator=None))
        assert out.frames.device.type == "meta"
        warps = sum(n for (kind, _, _), n in session.calls.items() if kind == "warp")
        assert warps == 3 * 2  # 3 warp steps x 2 warp layers
    assert subject.reference_cache.misses == 1 and subject.reference_cache.hits == 1
    assert pipe.scheduler.step.__name__ == "<lambda>"  # our step counter is gone again
    assert torch.device("meta") == next(pipe.transformer.parameters()).device
