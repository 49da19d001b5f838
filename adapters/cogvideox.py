"""CogVideoX adapter (5B with 3D RoPE; 2B without RoPE works too: its Q/K are RoPE-free already).

Token layout: one joint sequence per layer, text first (``encoder_hidden_states.size(1)``
tokens, 226 in the released models), then video tokens ordered (frame, row, column).
Flat layer index i is ``transformer.transformer_blocks[i].attn1``.

Context parallelism: diffusers has no plan for CogVideoX (its stock processor calls SDPA itself, so it never
sees a parallel config; diffusers issue #12603). `enable_context_parallel` gives it one
(`cogvideox_cp_plan`: the video tokens split at the first block, gathered after ``proj_out``; text and the
rotary tables stay whole on every rank) and puts `CogVideoXParallelAttnProcessor` on every layer: the stock
arithmetic through diffusers' attention dispatch, with Ulysses around it (`vwarper_hooks.contract.sharding`:
the video to every token of H/P heads, the text's own H/P heads, the text output of every head gathered back),
so the pipeline is right with and without `inject`. Under `inject` our processor does the same on every layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from vwarper_hooks.config import PAPER_WARP_LAYERS
from vwarper_hooks.contract import hookimpl
from vwarper_hooks.contract.adapter import Adapter, AttentionCall, LayerDefaults, proportional_layers
from vwarper_hooks.contract.calls import LayerRouter
from vwarper_hooks.contract.processors import (
    RoutedProcessor,
    joint_qkv,
    merge_heads,
    processor_problems,
    rotate_span,
    swap_processors,
)
from vwarper_hooks.model_hooks import context_parallel

STOCK_PROCESSOR = "CogVideoXAttnProcessor2_0"

logger = logging.getLogger(__name__)


class VwarperCogVideoXProcessor(RoutedProcessor):
    """Stock `CogVideoXAttnProcessor2_0` arithmetic, with the core's router in the middle.

    When the router does not want the layer, the original processor runs untouched (`RoutedProcessor`).
    The routed attention goes through diffusers' attention dispatch, so it follows
    ``transformer.set_attention_backend(...)`` (the stock processor calls SDPA itself). Under context
    parallelism it computes every layer (`stock_runs_parallel`), the unwanted ones as stock.
    """

    stock_runs_parallel = False

    def routed(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = encoder_hidden_states.size(1)
        qkv = joint_qkv(attn, hidden_states, encoder_hidden_states, text_first=True)  # (B, H, text + video, D)
        batch, seq_len = qkv.query.shape[0], qkv.query.shape[2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        def rope(x: torch.Tensor) -> torch.Tensor:
            return x if image_rotary_emb is None else apply_rotary_emb(x, image_rotary_emb)

        # in place on the video tokens, as the stock processor does (keys too, unless a cross-attention)
        rotate_ = rotate_span(None if image_rotary_emb is None else rope, qkv.video, keys=not attn.is_cross_attention)
        call = AttentionCall(self.layer, qkv.query, qkv.key, qkv.value, qkv.text, qkv.video, rotate_, rope,
                             self.attend(attention_mask))
        out = merge_heads(self.process(call))  # (B, text + video, H*D)
        out = attn.to_out[1](attn.to_out[0](out))
        text_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        return video_out, text_out


class CogVideoXParallelAttnProcessor(RoutedProcessor):
    """CogVideoX's stock attention, right under context parallelism too (`enable_context_parallel` installs it
    for good): one rank runs the stock processor; several run `VwarperCogVideoXProcessor.routed`'s arithmetic
    through diffusers' dispatch, with Ulysses around it. Never routed (its router is the no-op base)."""

    stock_runs_parallel = False
    routed = VwarperCogVideoXProcessor.routed


def cogvideox_cp_plan() -> dict[str, Any]:
    """The context-parallel plan `enable_context_parallel` gives diffusers: the video tokens split at the first
    block's input, gathered after ``proj_out``; text and rotary tables stay whole on every rank."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def enable_context_parallel(transformer: nn.Module, config: Any) -> None:
    """``transformer.enable_parallelism(config=config)`` for CogVideoX, which has no plan in diffusers: the
    plan `cogvideox_cp_plan` and, on every attention, `CogVideoXParallelAttnProcessor` (all or nothing).

    Example (each rank, after ``torch.distributed.init_process_group``)::

        enable_context_parallel(pipe.transformer, ContextParallelConfig(ulysses_degree=2))
    """
    layers = [block.attn1 for block in transformer.transformer_blocks]
    undo = swap_processors(layers, lambda i, original: CogVideoXParallelAttnProcessor(original, i, LayerRouter()))
    try:
        transformer.enable_parallelism(config=config, cp_plan=cogvideox_cp_plan())
    except BaseException:
        undo()
        raise


class CogVideoXAdapter(Adapter):
    """Adapter for `CogVideoXTransformer3DModel` (THUDM/CogVideoX-2b, -5b, 1.5)."""

    name = "cogvideox"
    processor = VwarperCogVideoXProcessor
    stock_processor = STOCK_PROCESSOR
    batched_kwargs = ("ofs",)
    context_parallel = True  # through `enable_context_parallel` (refused on the stock processor)

    def matches(self, transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "CogVideoXTransformer3DModel"

    def enable_context_parallel(self, transformer: nn.Module, config: Any) -> None:
        """Our plan and processor (diffusers has neither for CogVideoX): the module's `enable_context_parallel`."""
        enable_context_parallel(transformer, config)

    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def default_layers(self, depth: int) -> LayerDefaults | None:
        """The paper's layers (12, 20-29) wherever they exist (5B: 42 layers, 2B: 30); scaled to the depth of a
        shallower model (`proportional_layers`; e.g. the learned world model's 12 layers: 3 and 6-8)."""
        return None if depth > PAPER_WARP_LAYERS[1] else proportional_layers(depth)

    def problems(self, transformer: nn.Module) -> list[str]:
        layers = self.attention_layers(transformer)
        problems = processor_problems(layers, STOCK_PROCESSOR, (VwarperCogVideoXProcessor,
                                                                CogVideoXParallelAttnProcessor))
        if not problems and context_parallel(transformer) and any(
                type(layer.processor).__name__ == STOCK_PROCESSOR for layer in layers):
            problems.append(
                "Expected CogVideoX under context parallelism through vwarper_adapters.cogvideox."
                "enable_context_parallel(transformer, config), but its layers run the stock processor, which calls "
                "SDPA itself and attends to this rank's tokens only (diffusers has no CogVideoX plan, issue #12603). "
                "Load the transformer again and enable it with that function."
            )
        if not transformer.config.use_rotary_positional_embeddings:
            logger.info("CogVideoX without RoPE (2B): raw and RoPE-free Q/K coincide")
        return problems

    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        frames, height, width = latents.shape[1], latents.shape[3], latents.shape[4]
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        if p_t:
            frames = (frames + p_t - 1) // p_t
        return frames, height // p, width // p

    def encode_video(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        latents = vae.encode(video.to(vae.device, vae.dtype)).latent_dist.mode()
        latents = latents * vae.config.scaling_factor
        return latents.permute(0, 2, 1, 3, 4).to(pipe.transformer.dtype)  # (B, F, C, H, W)

    def encode_still(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        """CogVideoX 1.5 (temporal patch size 2): the first latent frame repeated up to a whole patch,
        as its pipelines pad; the one frame as is otherwise."""
        latents = self.encode_video(pipe, video)
        p_t = pipe.transformer.config.patch_size_t
        if p_t and latents.shape[1] % p_t:
            latents = torch.cat([latents[:, :1]] * (p_t - latents.shape[1] % p_t) + [latents], dim=1)
        return latents

    def video_shape(self, pipe: Any, latents: torch.Tensor) -> tuple[int, int, int]:
        frames = (latents.shape[1] - 1) * pipe.vae_scale_factor_temporal + 1
        return (
            frames,
            latents.shape[3] * pipe.vae_scale_factor_spatial,
            latents.shape[4] * pipe.vae_scale_factor_spatial,
        )

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """The transformer's sample size in pixels (the pipeline's own default: its height/width are None)."""
        config, spatial = pipe.transformer.config, pipe.vae_scale_factor_spatial
        return config.sample_height * spatial, config.sample_width * spatial

    def text_template(self, pipe: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """The transformer's text length (``max_text_seq_length``, 226 in the releases) at T5 width."""
        config = pipe.transformer.config
        shape = (1, int(config.max_text_seq_length), int(config.text_embed_dim))
        return {"encoder_hidden_states": torch.zeros(shape, dtype=pipe.transformer.dtype, device=device)}

    def forward_kwargs(
        self, pipe: Any, latents: torch.Tensor, timestep: torch.Tensor, text: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Adds the 3D RoPE the pipeline computes (5B, 1.5) and CogVideoX 1.5's ``ofs`` embedding input."""
        kwargs = super().forward_kwargs(pipe, latents, timestep, text)
        config, spatial = pipe.transformer.config, pipe.vae_scale_factor_spatial
        if config.use_rotary_positional_embeddings:
            height, width = latents.shape[3] * spatial, latents.shape[4] * spatial
            rope = pipe._prepare_rotary_positional_embeddings(height, width, latents.shape[1], latents.device)
            kwargs["image_rotary_emb"] = rope
        if getattr(config, "ofs_embed_dim", None) is not None:
            kwargs["ofs"] = latents.new_full((1,), 2.0)  # as the pipeline passes it
        return kwargs


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(CogVideoXAdapter())
