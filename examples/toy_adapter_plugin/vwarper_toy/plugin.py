"""The vwarper_hooks plugin of the toy model: an `Adapter` and its `register_adapters` hook.

Loaded by vwarper_hooks through the entry point ``toy_joint = "vwarper_toy.plugin"`` in the
``vwarper_hooks`` group. Keep this module's imports light and safe: an import error in a plugin
module stops every adapter from loading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vwarper_hooks import Adapter, AttentionCall, VwarperError
from vwarper_hooks.contract import hookimpl
from vwarper_hooks.contract.processors import RoutedProcessor

from .model import apply_rope


class VwarperToyProcessor(RoutedProcessor):
    """The stock toy processor's arithmetic with the core's router in the middle.

    `RoutedProcessor` runs the stock processor unchanged when the router does not want the layer.
    """

    def routed(
        self, attn: nn.Module, text: torch.Tensor, video: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_text, n = text.shape[1], text.shape[1] + video.shape[1]
        joint = torch.cat([text, video], dim=1)
        # RoPE-free Q/K: after the QK-norm, before rotary. Fresh tensors, so rotating in place is safe.
        q = attn.norm_q(attn.to_q(joint).unflatten(2, (attn.heads, -1))).transpose(1, 2)
        k = attn.norm_k(attn.to_k(joint).unflatten(2, (attn.heads, -1))).transpose(1, 2)
        v = attn.to_v(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2)

        def rope_fn(x: torch.Tensor) -> torch.Tensor:
            return apply_rope(x, *rope)

        def rotate_(qh: torch.Tensor, kh: torch.Tensor) -> None:
            qh[:, :, n_text:] = rope_fn(qh[:, :, n_text:])
            kh[:, :, n_text:] = rope_fn(kh[:, :, n_text:])

        def attend(qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(qh, kh, vh)

        call = AttentionCall(self.layer, q, k, v, slice(0, n_text), slice(n_text, n), rotate_, rope_fn, attend)
        out = attn.to_out(self.router.process(call).transpose(1, 2).flatten(2))
        return out[:, :n_text], out[:, n_text:]


class ToyJointAdapter(Adapter):
    """Adapter for `vwarper_toy.model.ToyJointTransformer` (flat index i = ``blocks[i].attn``)."""

    name = "toy_joint"
    processor = VwarperToyProcessor  # installed on every layer by the default install()
    stock_processor = "ToyAttnProcessor"  # problems() refuses any other processor on those layers

    def matches(self, transformer: nn.Module) -> bool:
        return type(transformer).__name__ == "ToyJointTransformer"

    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.attn for block in transformer.blocks]

    # timestep() and latents() keep their defaults: the forward names them timestep and hidden_states.

    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        return latents.shape[2], latents.shape[3], latents.shape[4]

    # The toy has no pipeline (no text encoder, no VAE): the pipeline-level parts say so.
    def encode_text(self, pipe: Any, prompt: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise VwarperError("Expected a pipeline with a text encoder, but the toy model has none. Pass embeddings.")

    def encode_video(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        raise VwarperError("Expected a pipeline with a VAE, but the toy model has none. Use latents directly.")

    def video_shape(self, pipe: Any, latents: torch.Tensor) -> tuple[int, int, int]:
        return latents.shape[2], latents.shape[3], latents.shape[4]


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(ToyJointAdapter())
