"""HunyuanVideo 1.5 adapter (`HunyuanVideo15Transformer3DModel`, hunyuanvideo-community/HunyuanVideo-1.5-*; diffusers
>= 0.36), text-to-video with `HunyuanVideo15Pipeline`.

Flat layer index i is ``transformer.transformer_blocks[i].attn``: dual-stream blocks only (54 in the
release). Token layout: one joint sequence per layer, video tokens first (ordered frame, row, column),
then the text tokens, projected by their own ``add_q/k/v_proj`` with ``norm_added_q/k``. RoPE rotates
video tokens only; RoPE-free Q/K are taken after the per-head RMS norm, before rotary.

What is its own:
- the text the blocks see is the transformer's reordering of three streams: the valid tokens of the
  vision stream (none in text-to-video), of the glyph (byT5) stream and of the Qwen2.5-VL prompt, then
  the padding of each. The subject token therefore sits after the valid glyph tokens (`text_positions`,
  one host read of the glyph mask per run), and the text mask the blocks get marks the real text keys
  (``AttentionCall.text_valid``; the stock attention masks padding as queries and as keys);
- the transformer's input is the latents beside zero conditioning latents and a zero mask (2C + 1
  channels, C out): `latents` reads the first C, `with_latents` puts zeros beside them, and the guard's
  image-to-video refusal (in != out channels) does not apply (`conditioning_channels`);
- the vision embedding input is zeros in text-to-video (``image_embeds``, cut to one row and expanded for
  the reference branch, built for standalone calls); image-to-video pipelines are refused.

Default layers: the paper's 12 and 20-29 of 42 scaled to the depth (`proportional_layers`: 54 layers:
match 15, warp 26-37). NOT validated on real weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from vwarper_hooks.contract import hookimpl
from vwarper_hooks.contract.adapter import Adapter, AttentionCall, LayerDefaults, proportional_layers
from vwarper_hooks.contract.processors import RoutedProcessor, joint_qkv, merge_heads, rotate_span

logger = logging.getLogger(__name__)

STOCK_PROCESSOR = "HunyuanVideo15AttnProcessor2_0"


class VwarperHunyuanVideo15Processor(RoutedProcessor):
    """Stock HunyuanVideo 1.5 attention arithmetic with the core's router in the middle."""

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
        n_video = hidden_states.shape[1]
        qkv = joint_qkv(attn, hidden_states, encoder_hidden_states, text_projections=True)  # (B, H, video + text, D)
        text_valid = attention_mask.bool()  # (B, text): real text tokens
        keys = F.pad(attention_mask, (n_video, 0), value=True).bool()  # (B, video + text), video always valid
        pairs = keys[:, None, :, None] & keys[:, None, None, :]  # (B, 1, S, S): valid query and valid key

        def rope(x: torch.Tensor) -> torch.Tensor:
            return x if image_rotary_emb is None else apply_rotary_emb(x, image_rotary_emb, sequence_dim=2)

        rotate_ = rotate_span(None if image_rotary_emb is None else rope, qkv.video)
        call = AttentionCall(self.layer, qkv.query, qkv.key, qkv.value, qkv.text, qkv.video, rotate_, rope,
                             self.attend(pairs), text_valid)
        out = merge_heads(self.router.process(call)).to(qkv.query.dtype)  # (B, video + text, H*D)
        video_out, text_out = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


class HunyuanVideo15Adapter(Adapter):
    """Adapter for `HunyuanVideo15Transformer3DModel` (text-to-video; image-to-video is refused)."""

    name = "hunyuan_video15"
    processor = VwarperHunyuanVideo15Processor
    stock_processor = STOCK_PROCESSOR
    cfg_in_one_batch = False
    batched_kwargs = ("image_embeds",)
    conditioning_channels = True
    extra_text_kwargs = ("encoder_hidden_states_2", "image_embeds")

    def matches(self, transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "HunyuanVideo15Transformer3DModel"

    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.attn for block in transformer.transformer_blocks]

    def default_layers(self, depth: int) -> LayerDefaults:
        """The paper's layers scaled to the depth; not validated on real HunyuanVideo 1.5 weights."""
        return proportional_layers(depth)

    def pipeline_problems(self, pipe: Any) -> list[str]:
        """Image-to-video pipelines (an image's latents and vision tokens as conditioning) are refused."""
        if "ImageToVideo" in type(pipe).__name__:
            return [f"Expected the text-to-video HunyuanVideo15Pipeline, but got {type(pipe).__name__}, whose image "
                    "conditioning the reference branch does not build. Use HunyuanVideo15Pipeline."]
        return []

    # ------------------------------------------------------------------ latents beside the conditioning channels
    def latents(self, kwargs: dict[str, Any]) -> torch.Tensor:
        """The first C of the 2C + 1 input channels (B, C, F, H, W): the latents the scheduler steps."""
        hidden = kwargs["hidden_states"]
        return hidden[:, : (hidden.shape[1] - 1) // 2]

    def with_latents(self, kwargs: dict[str, Any], latents: torch.Tensor) -> dict[str, Any]:
        """`latents` beside zero conditioning latents and a zero mask, as the text-to-video pipeline passes them."""
        rest = latents.new_zeros(latents.shape[0], latents.shape[1] + 1, *latents.shape[2:])  # (B, C + 1, F, H, W)
        return {**kwargs, "hidden_states": torch.cat([latents, rest], dim=1)}  # (B, 2C + 1, F, H, W)

    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        return latents.shape[2] // p_t, latents.shape[3] // p, latents.shape[4] // p

    def text_positions(self, positions: slice, ids_length: int, kwargs: dict[str, Any]) -> slice:
        """Crop the chat template's prefix, then skip the valid glyph tokens the transformer puts first."""
        shift = max(ids_length - kwargs["encoder_hidden_states"].shape[1], 0)
        glyphs = kwargs.get("encoder_attention_mask_2")
        if torch.is_tensor(glyphs) and not glyphs.is_meta:
            shift -= int(glyphs[0].bool().sum())  # one host read per run
        return slice(positions.start - shift, positions.stop - shift)

    # ------------------------------------------------------------------ the pipeline around it
    def encode_text(self, pipe: Any, prompt: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Qwen2.5-VL embeddings and the glyph (byT5) embeddings, each with its mask."""
        generation = kwargs["encoder_hidden_states"]
        embeds, mask, glyphs, glyph_mask = pipe.encode_prompt(
            prompt=prompt, device=generation.device, dtype=generation.dtype, batch_size=1, num_videos_per_prompt=1
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask,
                "encoder_hidden_states_2": glyphs, "encoder_attention_mask_2": glyph_mask}

    def forward_kwargs(
        self, pipe: Any, latents: torch.Tensor, timestep: torch.Tensor, text: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """The timestep in the transformer's dtype and the vision tokens of text-to-video (zeros), as the pipeline
        passes them."""
        kwargs = super().forward_kwargs(pipe, latents, timestep.to(pipe.transformer.dtype), text)  # as the pipeline
        config = pipe.transformer.config
        shape = (latents.shape[0], pipe.vision_num_semantic_tokens, config.image_embed_dim)
        kwargs["image_embeds"] = torch.zeros(shape, dtype=pipe.transformer.dtype, device=latents.device)
        return kwargs

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """The pipeline's own default: its target size at its default aspect ratio (height/width are None)."""
        width_ratio, height_ratio = pipe.default_aspect_ratio
        return tuple(pipe.video_processor.calculate_default_height_width(height_ratio, width_ratio, pipe.target_size))


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(HunyuanVideo15Adapter())
