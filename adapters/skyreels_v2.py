"""SkyReels-V2 adapter (`SkyReelsV2Transformer3DModel`, Skywork/SkyReels-V2-T2V-14B-540P-Diffusers and others).

SkyReels-V2 is Wan's architecture: flat layer index i is ``transformer.blocks[i].attn1``, the
self-attention over video tokens only (ordered frame, row, column) with 3D RoPE; text enters through
the cross-attention ``blocks[i].attn2``, whose RoPE-free video queries and text keys go to
`LayerRouter.observe_text_attention` when the core asks (the foreground mask's video->text scores).
RoPE-free Q/K are taken after the RMS norm across all heads, before the head split and rotary.

What is its own: the rotary embedding is real (cos, sin) pairs since diffusers 0.36 and complex
frequencies before (both are handled, with the stock arithmetic of each), and the stock processor's
class name changed with it. Diffusion forcing (per-frame timesteps, the ``DiffusionForcing`` pipelines)
and image-to-video are refused: the reference branch has one timestep per call and no image branch.

Default layers: the paper's 12 and 20-29 of 42 scaled to the depth (`proportional_layers`: 30 layers,
1.3B: match 9, warp 14-21; 40 layers, 14B: match 11, warp 19-28). NOT validated on real weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from diffusers.models.transformers import transformer_skyreels_v2
from torch import nn
from vwarper_adapters.wan import VwarperWanCrossAttnProcessor, WanAdapter, rotate_pairs

from vwarper_hooks.contract import hookimpl
from vwarper_hooks.contract.adapter import Adapter
from vwarper_hooks.contract.separate_text import VideoSelfAttentionProcessor

logger = logging.getLogger(__name__)

#: the stock processor: renamed in diffusers 0.36, when its rotary embedding became real pairs
STOCK_PROCESSOR = next(name for name in ("SkyReelsV2AttnProcessor", "SkyReelsV2AttnProcessor2_0")
                       if hasattr(transformer_skyreels_v2, name))


def _rope(rotary_emb: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A rotated copy of (B, H, N, D) video queries/keys, as the installed stock processor rotates them."""
    if rotary_emb is None:
        return None
    if torch.is_tensor(rotary_emb):  # diffusers 0.35: complex frequencies (1, 1, N, D/2)

        def rope(x: torch.Tensor) -> torch.Tensor:
            pairs = torch.view_as_complex(x.to(torch.float32).unflatten(3, (-1, 2)))  # (B, H, N, D/2)
            return torch.view_as_real(pairs * rotary_emb).flatten(3, 4).type_as(x)

        return rope
    cos, sin = (f.transpose(1, 2) for f in rotary_emb)  # (1, N, 1, D) -> (1, 1, N, D)
    return lambda x: rotate_pairs(x, cos, sin)


class VwarperSkyReelsV2SelfAttnProcessor(VideoSelfAttentionProcessor):
    """Stock SkyReels-V2 self-attention (``attn1``) with the core's router in the middle."""

    def routed(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: Any = None,
    ) -> torch.Tensor:
        return self.attend_video(attn, hidden_states, _rope(rotary_emb), attention_mask)


class VwarperSkyReelsV2CrossAttnProcessor(VwarperWanCrossAttnProcessor):
    """Stock SkyReels-V2 text cross-attention (``attn2``): Wan's, whose arithmetic it shares."""


class SkyReelsV2Adapter(WanAdapter):
    """Adapter for `SkyReelsV2Transformer3DModel` (text-to-video; diffusion forcing and image-to-video refused).

    Wan's layers, token layout, defaults and forward calls; its own processors and refusals.
    """

    name = "skyreels_v2"
    processor = VwarperSkyReelsV2SelfAttnProcessor
    stock_processor = STOCK_PROCESSOR
    context_parallel = False  # diffusers has no plan for it; its processors are not written for one

    def matches(self, transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "SkyReelsV2Transformer3DModel"

    def processor_groups(self, transformer: nn.Module) -> list[tuple[list[nn.Module], type]]:
        """The self-attentions (routed) and the cross-attentions (observed for video->text scores)."""
        return [
            (self.attention_layers(transformer), VwarperSkyReelsV2SelfAttnProcessor),
            (self.text_attention_layers(transformer), VwarperSkyReelsV2CrossAttnProcessor),
        ]

    def pipeline_problems(self, pipe: Any) -> list[str]:
        """Diffusion forcing (per-frame timesteps) is refused."""
        if "DiffusionForcing" in type(pipe).__name__ or getattr(pipe.transformer.config, "num_frame_per_block", 1) > 1:
            return [
                f"Expected a SkyReels-V2 pipeline with one timestep per call, but got {type(pipe).__name__} "
                "(diffusion forcing: per-frame timesteps and causal blocks), which the reference branch does not "
                "support. Use SkyReelsV2Pipeline with a T2V checkpoint such as "
                "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers."
            ]
        return []


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(SkyReelsV2Adapter())
