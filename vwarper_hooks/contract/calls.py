"""What an adapter's attention processor and the core say to each other: one `AttentionCall` per routed
layer, and the `LayerRouter` the processor asks (a base class: every method has a no-op default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class AttentionCall:
    """One attention computation of one layer, as the core sees it.

    Tensors are laid out (batch, heads, tokens, head_dim). `query` and `key` are RoPE-free
    (after QK-norm, before rotary); call `rotate_` before attending. `text_valid` (batch, text
    tokens) bool marks real text keys where the model masks padding out of its attention
    (HunyuanVideo); None: every text key is attended to (CogVideoX, which has no text mask).
    `shards` (a `sharding.TokenShards`) is set under context parallelism: the tensors then hold every
    token of this rank's heads only (H/P of them); None: every head.
    """

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    text: slice
    video: slice
    rotate_: Callable[[torch.Tensor, torch.Tensor], None]
    rope: Callable[[torch.Tensor], torch.Tensor]
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    text_valid: torch.Tensor | None = None
    shards: Any = None

    def default(self) -> torch.Tensor:
        """The stock computation: rotate in place, then attend."""
        self.rotate_(self.query, self.key)
        return self.attend(self.query, self.key, self.value)


class LayerRouter:
    """What an adapter's processor talks to (the core's session subclasses it).

    Every method has a default that leaves the model as stock: a processor may call any of them on
    any router, and a test can pass ``LayerRouter()`` itself. The core's router overrides them all.
    """

    #: True when the router keeps each registered processor's ``active`` flag up to date, so a compiled
    #: block reads one flag (the core's router does); False: the processor asks `wants` per call
    keeps_flags: bool = False

    def wants(self, layer: int) -> bool:
        """True when the core needs this layer's call now (False: run the stock processor)."""
        return False

    def process(self, call: AttentionCall) -> torch.Tensor:
        """Return the attention output (batch, heads, tokens, head_dim) for `call`."""
        return call.default()

    def wants_text(self, layer: int) -> bool:
        """True when video->text scores of `layer` are needed (models with a separate text attention)."""
        return False

    def observe_text_attention(
        self, layer: int, query_video: torch.Tensor, key_text: torch.Tensor, text_valid: torch.Tensor | None = None
    ) -> None:
        """Receive (B, heads, N, d) video queries and (B, heads, T, d) text keys of a text attention
        (and optionally (B, T) bool `text_valid`, False for padding the model masks out)."""

    def entering(self, layer: int) -> None:
        """A routed layer is about to compute its Q/K/V. `RoutedProcessor` calls it first (the core's
        lockstep reference branch pauses or runs there); a processor written without the base must too."""

    def register(self, processor: Any) -> None:
        """A processor was installed for this router (a router with `keeps_flags` remembers it)."""
