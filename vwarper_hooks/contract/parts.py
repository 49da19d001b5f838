"""The method's two replaceable parts, as plugins see them: a `Matcher` (which reference token each
generation token reads) and an `Injector` (how the reference appearance enters the attention), with the
values they exchange: `MatchResult`, `ReferenceFeatures` and `TokenMap`.

Plugins register factories for them with the ``register_matchers`` / ``register_injectors`` hooks
(`vwarper_hooks.contract.hookspecs`); `WarpConfig.matcher` / `WarpConfig.injector` pick one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from .calls import AttentionCall


class MatchResult(NamedTuple):
    """Flows between the generation and its references (`Matcher.match`)."""

    #: (N,) long: generation token -> token of the references side by side ``[ref 0, ref 1, ...]``
    flow: torch.Tensor
    #: (k*N,) long: reference token -> generation token
    back: torch.Tensor
    #: (N,) long: the reference each generation token reads; None for one reference
    reference: torch.Tensor | None = None


def as_match_result(result: Any) -> MatchResult:
    """A `MatchResult` from what a matcher returned (matchers written before it return a plain tuple
    ``(flow, back)`` or ``(flow, back, reference)``)."""
    if isinstance(result, MatchResult):
        return result
    return MatchResult(*result)


class Matcher(Protocol):
    """How generation tokens find their reference tokens.

    The session calls `features` on the match layer's attention call of each branch (at step t-1)
    and `match` once per warp step t with what it returned for both branches.
    """

    name: str

    def features(self, call: AttentionCall, sample: int) -> Any:
        """What to keep of `call` for batch row `sample` (copy it: the call's buffers are reused)."""

    def match(self, gen: Any, refs: list[Any], grid: tuple[int, int, int]) -> MatchResult:
        """Flows between the generation and the references (what `features` kept of each).

        Optional: ``score(gen, ref, grid)`` -> 0-d tensor, higher for a better match of one reference;
        needed for ``WarpConfig(reference_image="best")``.
        """


@dataclass
class ReferenceFeatures:
    """Reference-branch video features of one layer at one step, (1, heads, N, d)."""

    value: torch.Tensor
    key: torch.Tensor | None = None  # post-RoPE; kept only for injectors that need keys


@dataclass
class TokenMap:
    """Where each generation video token reads from, and which tokens are injected (one warp step)."""

    flow: torch.Tensor  # (N,) long: generation token -> reference token
    mask: torch.Tensor  # (N,) bool: final injection mask M_t
    ref_mask: torch.Tensor  # (N,) bool: reference tokens that some masked generation token reads


class Injector(Protocol):
    """How the reference appearance enters one generation attention call of a warp layer."""

    name: str
    #: True when `attend` reads ``ref.key`` (the reference branch then keeps post-RoPE keys too)
    needs_reference_keys: bool

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, tokens: TokenMap) -> torch.Tensor:
        """Attention output (B, heads, tokens, d) with reference appearance injected."""
