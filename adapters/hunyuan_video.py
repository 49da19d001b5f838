"""HunyuanVideo adapter (`HunyuanVideoTransformer3DModel`, hunyuanvideo-community/HunyuanVideo).

Flat layer index: the dual-stream blocks first, then the single-stream blocks::

    i <  num_layers:  transformer.transformer_blocks[i].attn                       (20 in the release)
    i >= num_layers:  transformer.single_transformer_blocks[i - num_layers].attn   (40 in the release)

Token layout: one joint sequence per layer, video tokens first (ordered frame, row, column), then
the text tokens (``encoder_hidden_states.size(1)``, the prompt after the template is cropped).
Dual-stream blocks project text with their own ``add_q/k/v_proj`` and ``norm_added_q/k``;
single-stream blocks project the concatenation with ``to_q/k/v``. RoPE rotates video tokens only.
RoPE-free Q/K are taken after the RMS QK-norm, before rotary. Values handed to the core are the
joint values; only their video part is ever warped. The prompt is padded to a fixed length and
the padding masked out of attention: ``AttentionCall.text_valid`` carries that mask so the
foreground score ignores padded keys as the model does.

Default layers: the paper's 12 and 20-29 of 42 scaled to the depth (60 layers: match 17, warp
29-41). NOT validated on real weights: a heuristic starting point; check with real weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from vwarper_hooks.contract import Adapter, AttentionCall, LayerDefaults, hookimpl, proportional_layers
from vwarper_hooks.contract.processors import RoutedProcessor, joint_qkv, merge_heads, rotate_span

logger = logging.getLogger(__name__)

STOCK_PROCESSOR = "HunyuanVideoAttnProcessor2_0"


def _text_valid(attention_mask: torch.Tensor | None, n_video: int, n_text: int) -> torch.Tensor | None:
    """(B, n_text) bool of real text keys from the transformer's (B, 1, 1, video + text) key mask.

    HunyuanVideo pads the prompt to a fixed length and masks the padding out of every attention;
    the foreground score must ignore those keys too. None when there is no such mask.
    """
    if attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.shape[-1] != n_video + n_text:
        return None
    keys = attention_mask.reshape(attention_mask.shape[0], -1, attention_mask.shape[-1])
    if keys.shape[1] != 1:  # a per-query mask: not the layout this adapter knows, keep every key
        return None
    return keys[:, 0, n_video:]


class VwarperHunyuanVideoProcessor(RoutedProcessor):
    """Stock HunyuanVideo attention arithmetic with the core's router in the middle."""

    def wanted(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
               *args: Any, **kwargs: Any) -> bool:
        """When the core wants the layer and the call has a text stream (the joint layout routed here)."""
        return encoder_hidden_states is not None and super().wanted()

    def routed(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_video, n_text = hidden_states.shape[1], encoder_hidden_states.shape[1]
        # dual-stream blocks project text with add_*_proj; single-stream ones the concatenation with to_*
        qkv = joint_qkv(attn, hidden_states, encoder_hidden_states, text_projections=attn.add_q_proj is not None)

        def rope(x: torch.Tensor) -> torch.Tensor:
            return x if image_rotary_emb is None else apply_rotary_emb(x, image_rotary_emb, sequence_dim=2)

        rotate_ = rotate_span(None if image_rotary_emb is None else rope, qkv.video)
        call = AttentionCall(self.layer, qkv.query, qkv.key, qkv.value, qkv.text, qkv.video, rotate_, rope,
                             self.attend(attention_mask), _text_valid(attention_mask, n_video, n_text))
        out = merge_heads(self.router.process(call)).to(qkv.query.dtype)  # (B, video + text, H*D)
        video_out, text_out = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


class HunyuanVideoAdapter(Adapter):
    """Adapter for `HunyuanVideoTransformer3DModel` (text-to-video; image-to-video is refused by inject)."""

    name = "hunyuan_video"
    processor = VwarperHunyuanVideoProcessor
    stock_processor = STOCK_PROCESSOR
    batched_kwargs = ("guidance",)
    cfg_in_one_batch = False
    #: distilled guidance the standalone forward (training) conditions on, in the pipeline's units
    #: before its x1000 scaling; 1.0 as HunyuanVideo LoRA trainers commonly use (generation: 6.0)
    train_guidance = 1.0

    def matches(self, transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "HunyuanVideoTransformer3DModel"

    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        dual = [block.attn for block in transformer.transformer_blocks]
        return dual + [block.attn for block in transformer.single_transformer_blocks]

    def default_layers(self, depth: int) -> LayerDefaults:
        """The paper's layers scaled to the depth; not validated on real HunyuanVideo weights."""
        return proportional_layers(depth)

    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        return latents.shape[2] // p_t, latents.shape[3] // p, latents.shape[4] // p

    def text_positions(self, positions: slice, ids_length: int, kwargs: dict[str, Any]) -> slice:
        """The pipeline drops the prompt template's first ``crop_start`` ids: shift by what was cropped."""
        shift = max(ids_length - kwargs["encoder_hidden_states"].shape[1], 0)
        return slice(positions.start - shift, positions.stop - shift)

    def encode_text(self, pipe: Any, prompt: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        generation = kwargs["encoder_hidden_states"]
        embeds, pooled, mask = pipe.encode_prompt(
            prompt=prompt,
            num_videos_per_prompt=1,
            device=generation.device,
            dtype=generation.dtype,
            max_sequence_length=generation.shape[1],
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "pooled_projections": pooled}

    def forward_kwargs(
        self, pipe: Any, latents: torch.Tensor, timestep: torch.Tensor, text: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Adds the guidance embedding input (``train_guidance`` x 1000, as the pipeline scales it) when
        the transformer has guidance embeds (the released, guidance-distilled model)."""
        kwargs = super().forward_kwargs(pipe, latents, timestep, text)
        if getattr(pipe.transformer.config, "guidance_embeds", False):
            shape, dtype = (latents.shape[0],), pipe.transformer.dtype
            kwargs["guidance"] = torch.full(shape, self.train_guidance, dtype=dtype, device=latents.device) * 1000.0
        return kwargs


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(HunyuanVideoAdapter())
