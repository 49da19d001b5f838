"""Wan adapter (`WanTransformer3DModel`, Wan-AI/Wan2.1-T2V-1.3B-Diffusers and -14B).

Flat layer index i is ``transformer.blocks[i].attn1``: the self-attention, video tokens only
(ordered frame, row, column), with 3D RoPE. Text enters through the cross-attention
``blocks[i].attn2`` (queries: video, keys/values: text, no RoPE); that is where the foreground
mask's video->text scores come from: when the core asks (`LayerRouter.wants_text(i)`), the
``attn2`` processor hands the RoPE-free video queries and text keys of layer i to
`LayerRouter.observe_text_attention` and then runs the stock cross-attention unchanged.

RoPE-free Q/K are taken after the RMS norm (Wan normalises across all heads, before splitting
heads), before rotary. Values are the self-attention values; ``AttentionCall.text`` is empty.

Default layers: the paper's 12 and 20-29 of 42 scaled to the depth (30 layers, 1.3B: match 9,
warp 14-21; 40 layers, 14B: match 11, warp 19-28). NOT validated on real weights.
Wan 2.2 A14B (two experts, ``transformer`` above the timestep boundary, ``transformer_2`` below it): both
are routed, and the reference branch and its inversion run the expert the pipeline runs at each timestep
(`expert_boundary`, `vwarper_hooks.contract.experts`). Not covered: per-token timesteps
(``expand_timesteps``, TI2V-5B), which the reference branch does not support (refused).
Context parallelism (diffusers' ``enable_parallelism``, Ulysses or ring): the self-attention hands the core
every token of this rank's heads (`RoutedProcessor.process`) and gathers its rotary tables by token; the
cross-attention keeps its local tokens, whose scores the core gathers (`vwarper_hooks.contract.sharding`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vwarper_hooks.contract import Adapter, LayerDefaults, hookimpl, proportional_layers
from vwarper_hooks.contract.processors import heads, merge_heads
from vwarper_hooks.contract.separate_text import TextObserverProcessor, VideoSelfAttentionProcessor

logger = logging.getLogger(__name__)

STOCK_PROCESSOR = "WanAttnProcessor"
TEXT_CONTEXT = 512  # Wan's fixed text length when image tokens are prepended (I2V)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved (even, odd) pairs of the last dim; same arithmetic as stock."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


class VwarperWanSelfAttnProcessor(VideoSelfAttentionProcessor):
    """Stock Wan self-attention (``attn1``) with the core's router in the middle."""

    def routed(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        rope = None
        if rotary_emb is not None:
            shards = self.shards  # context parallelism: this rank's tokens here, every token in the core
            if shards is not None:
                rotary_emb = tuple(shards.gather_tokens(f, dim=1) for f in rotary_emb)  # (1, N, 1, D)
            cos, sin = (f.transpose(1, 2) for f in rotary_emb)  # (1, N, 1, D) -> (1, 1, N, D)

            def rope(x: torch.Tensor) -> torch.Tensor:
                return rotate_pairs(x, cos, sin)

        return self.attend_video(attn, hidden_states, rope, attention_mask)


class VwarperWanCrossAttnProcessor(TextObserverProcessor):
    """Stock Wan cross-attention (``attn2``); shows the core video queries and text keys when asked. Under
    context parallelism it keeps this rank's video tokens (the core gathers their scores)."""

    def routed(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        text = encoder_hidden_states
        if attn.add_k_proj is not None:  # I2V (refused by inject): image tokens first, then the text
            text = text[:, text.shape[1] - TEXT_CONTEXT :]
        q = heads(attn, hidden_states, "to_q", "norm_q", "across_heads").transpose(1, 2)  # (B, H, N, D)
        k = heads(attn, text, "to_k", "norm_k", "across_heads").transpose(1, 2)  # (B, H, T, D)
        self.router.observe_text_attention(self.layer, q, k)
        if attn.add_k_proj is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        # The stock text cross-attention, computed once: the core reads its Q/K, no second projection.
        v = heads(attn, text, "to_v", None, "across_heads").transpose(1, 2)
        out = merge_heads(self.attend(attention_mask)(q, k, v)).type_as(q)  # (B, N, H*D)
        return attn.to_out[1](attn.to_out[0](out))


class WanAdapter(Adapter):
    """Adapter for `WanTransformer3DModel` (Wan 2.1 text-to-video; image-to-video is refused by inject)."""

    name = "wan"
    processor = VwarperWanSelfAttnProcessor
    stock_processor = STOCK_PROCESSOR
    batched_kwargs = ("encoder_hidden_states_image",)
    cfg_in_one_batch = False
    text_attention_outside = True
    context_parallel = True  # video-only self-attention; diffusers has Wan's `_cp_plan`

    def matches(self, transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "WanTransformer3DModel"

    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.attn1 for block in transformer.blocks]

    def text_attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        """The cross-attention of each layer (same flat index)."""
        return [block.attn2 for block in transformer.blocks]

    def processor_groups(self, transformer: nn.Module) -> list[tuple[list[nn.Module], type]]:
        """The self-attentions (routed) and the cross-attentions (observed for video->text scores)."""
        return [
            (self.attention_layers(transformer), VwarperWanSelfAttnProcessor),
            (self.text_attention_layers(transformer), VwarperWanCrossAttnProcessor),
        ]

    def default_layers(self, depth: int) -> LayerDefaults:
        """The paper's layers scaled to the depth; not validated on real Wan weights."""
        return proportional_layers(depth)

    def pipeline_problems(self, pipe: Any) -> list[str]:
        """Per-token timesteps (Wan 2.2 TI2V-5B) are refused; two experts (Wan 2.2 A14B) are routed."""
        problems = []
        config = getattr(pipe, "config", None)
        if config is not None and getattr(config, "expand_timesteps", False):
            problems.append(
                "Expected a Wan pipeline with one timestep per step, but got expand_timesteps=True "
                "(Wan 2.2 TI2V-5B per-token timesteps), which the reference branch does not support yet. "
                "Use a Wan 2.1 T2V model such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers."
            )
        return problems

    def expert_boundary(self, pipe: Any) -> float | None:
        """Wan 2.2 A14B: ``transformer`` runs timesteps >= ``boundary_ratio * num_train_timesteps``,
        ``transformer_2`` the others (the pipeline's own rule); None with one transformer."""
        ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
        if ratio is None or getattr(pipe, "transformer_2", None) is None:
            return None
        return float(ratio) * pipe.scheduler.config.num_train_timesteps

    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        p_t, p_h, p_w = transformer.config.patch_size
        return latents.shape[2] // p_t, latents.shape[3] // p_h, latents.shape[4] // p_w


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(WanAdapter())
