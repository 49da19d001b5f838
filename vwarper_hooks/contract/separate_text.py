"""Bases of the processors of families whose text has its own cross-attention (Wan, SkyReels-V2, LTX-Video):
a video-only self-attention the core routes (`VideoSelfAttentionProcessor`), and a text cross-attention that
only shows the core its video->text scores (`TextObserverProcessor`). A family's file keeps its own RoPE, text
slicing and masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .calls import AttentionCall
from .joint_attention import joint_qkv, merge_heads, rotate_span
from .processors import RoutedProcessor


def _unrotated(x: torch.Tensor) -> torch.Tensor:
    return x


class VideoSelfAttentionProcessor(RoutedProcessor):
    """Base of a video-only self-attention's processor (QK-normalised across heads before the split). A
    subclass's `routed` builds its RoPE and calls `attend_video`."""

    def wanted(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
               *args: Any, **kwargs: Any) -> bool:
        """A self-attention call (no text keys) of a layer the core wants."""
        return encoder_hidden_states is None and super().wanted()

    def attend_video(self, attn: nn.Module, hidden_states: torch.Tensor,
                     rope: Callable[[torch.Tensor], torch.Tensor] | None,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The stock self-attention with the core in the middle: project, hand an `AttentionCall` whose
        ``rope`` returns a rotated copy (None: no rotary embedding) to the core (`process`), project out."""
        qkv = joint_qkv(attn, hidden_states, qk_norm="across_heads")  # (B, H, N, D), video only
        call = AttentionCall(self.layer, qkv.query, qkv.key, qkv.value, qkv.text, qkv.video,
                             rotate_span(rope, qkv.video), rope or _unrotated, self.attend(attention_mask))
        out = merge_heads(self.process(call)).to(qkv.query.dtype)  # (B, N, H*D)
        return attn.to_out[1](attn.to_out[0](out))


class TextObserverProcessor(RoutedProcessor):
    """Base of a text cross-attention's processor (Wan, SkyReels-V2, LTX-Video: video queries, text keys): it
    shows the core its video queries and text keys (`LayerRouter.observe_text_attention`) where the foreground
    score reads the layer (``router.wants_text(layer)``), then attends as stock. A subclass writes `routed`."""

    #: the self-attention of the same layer tells the router it enters the layer; this one never does
    enters_layer = False

    def wanted(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
               *args: Any, **kwargs: Any) -> bool:
        """A cross-attention call (text keys) of a layer whose video->text scores the core needs (`asks`)."""
        return encoder_hidden_states is not None and super().wanted()

    def asks(self) -> bool:
        """This attention only shows the core its video->text scores: ``router.wants_text(layer)``."""
        return self.router.wants_text(self.layer)
