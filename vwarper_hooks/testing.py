"""The public face of the porting kits, for plugin authors' tests (no downloads, CPU, seconds).

Tiny randomly initialised pipelines of every built-in family (`tiny_pipeline("wan")`,
`tiny_cogvideox_pipeline()` with 42 layers so the paper's layer indices exist, ...), arguments
for a fast deterministic call (`tiny_call_kwargs`), `tie_query_key` (random attention that
matches like trained attention), and the adapter conformance kit (`check_adapter`,
`AdapterConformance`). Everything lives in `vwarper_hooks.porting`; this module re-exports it.
"""

from __future__ import annotations

from .errors import ConformanceError
from .porting.conformance import (
    AdapterConformance,
    ConformanceCase,
    ConformanceReport,
    case_from_pipeline,
    check_adapter,
    forward_inputs,
)
from .porting.tiny_models import (
    FAMILIES,
    TINY_FRAMES,
    TINY_HEIGHT,
    TINY_TEXT_LEN,
    TINY_WIDTH,
    tiny_call_kwargs,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_transformer,
    tiny_cogvideox_vae,
    tiny_hunyuan_video_pipeline,
    tiny_hunyuan_video_transformer,
    tiny_pipeline,
    tiny_wan_pipeline,
    tiny_wan_transformer,
)
from .porting.tiny_text import VOCAB_WORDS, tie_query_key, tiny_text_encoder, tiny_tokenizer

__all__ = [
    "FAMILIES",
    "TINY_FRAMES",
    "TINY_HEIGHT",
    "TINY_TEXT_LEN",
    "TINY_WIDTH",
    "VOCAB_WORDS",
    "AdapterConformance",
    "ConformanceCase",
    "ConformanceError",
    "ConformanceReport",
    "case_from_pipeline",
    "check_adapter",
    "forward_inputs",
    "tie_query_key",
    "tiny_call_kwargs",
    "tiny_cogvideox_pipeline",
    "tiny_cogvideox_transformer",
    "tiny_cogvideox_vae",
    "tiny_hunyuan_video_pipeline",
    "tiny_hunyuan_video_transformer",
    "tiny_pipeline",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_wan_pipeline",
    "tiny_wan_transformer",
]
