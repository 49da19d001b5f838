"""Library issues found while building `benchmarks/cost.py`, fixed; these tests keep them fixed.

1. HunyuanVideo as the diffusers docs load it (transformer in bfloat16, text encoders in float16): the
reference branch's text conditioning
(`HunyuanVideoAdapter.encode_text`) comes back in the text encoders' dtypes (pooled projections in
float16, the attention mask as int64), where the pipeline casts its own to the transformer's dtype, so
the first reference forward of a cold call fails on a dtype mismatch. Plain generation works. The
tiny test pipelines are all float32, which is why nothing else shows it.

2. `WarpConfig.updated(...)` marks every field as set by the user, so `for_adapter` no longer fills in
the adapter's default layers: ``WarpConfig().updated(cache_reference_features=True)`` on Wan 1.3B
(30 layers) silently matches at 12 and warps 20-29 (CogVideoX's) instead of 9 and 14-21.
"""

from __future__ import annotations

import torch
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.testing import tiny_call_kwargs, tiny_pipeline


def _docs_dtypes():
    pipe = tiny_pipeline("hunyuan_video")
    pipe.transformer.to(torch.bfloat16)
    pipe.text_encoder.to(torch.float16)
    pipe.text_encoder_2.to(torch.float16)
    kwargs = tiny_call_kwargs(num_inference_steps=3, output_type="latent")
    kwargs.pop("negative_prompt")  # no true CFG
    return pipe, kwargs


def test_plain_generation_works_with_float16_text_encoders():
    pipe, kwargs = _docs_dtypes()
    assert pipe(**kwargs).frames.dtype == torch.bfloat16


def test_cold_call_works_with_float16_text_encoders():
    pipe, kwargs = _docs_dtypes()
    subject = vwarper.Subject.from_images([Image.new("RGB", (64, 64), (200, 80, 40))], "<clock>", "clock")
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2))):
        pipe(**kwargs)


def test_updated_keeps_the_adapters_default_layers():
    from vwarper_adapters.wan import WanAdapter

    default = vwarper.WarpConfig().for_adapter(WanAdapter(), 30)
    assert (default.match_layer, default.warp_layers) == (9, (14, 21))
    updated = vwarper.WarpConfig().updated(cache_reference_features=True).for_adapter(WanAdapter(), 30)
    assert (updated.match_layer, updated.warp_layers) == (9, (14, 21))
