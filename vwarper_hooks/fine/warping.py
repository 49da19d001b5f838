"""Value warping (paper eq. 7-9), and the `Injector` contract every appearance injector follows.

Each injector turns one generation-branch `AttentionCall` plus the reference branch's features
of the same layer and step into the attention output. They are built through the
`make_injector` hook, so plugins can add more; `WarpConfig.injector` picks one by name.

CFG: the flow and mask come from the conditional sample and the same warped reference values are
used for both halves of the batch (each half keeps its own values outside the mask). Warping only
the conditional half would make guidance amplify the difference between warped and unwarped
values, i.e. exaggerate the reference appearance by the guidance scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..adapter import AttentionCall
from ..config import WarpConfig
from ..hookspecs import hookimpl


@dataclass
class ReferenceFeatures:
    """Reference-branch video features of one layer at one step, (1, heads, N, d)."""

    value: torch.Tensor
    key: torch.Tensor | None = None  # post-RoPE; kept only for injectors that need keys


@dataclass
class WarpPlan:
    """Where each generation video token reads from, and which tokens are injected."""

    flow: torch.Tensor  # (N,) long: generation token -> reference token
    mask: torch.Tensor  # (N,) bool: final injection mask M_t
    ref_mask: torch.Tensor  # (N,) bool: reference tokens that some masked generation token reads


class Injector(Protocol):
    name: str
    needs_reference_keys: bool

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, plan: WarpPlan) -> torch.Tensor:
        """Attention output (B, heads, tokens, d) with reference appearance injected."""


def key_mask(call: AttentionCall, video_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean key mask (batch, 1, 1, tokens): the text keys the model attends to (all of them
    unless `call.text_valid` masks padding) plus the kept video keys (all when `video_keep` is None)."""
    keep = torch.ones(call.key.shape[0], call.key.shape[2], dtype=torch.bool, device=call.key.device)
    if video_keep is not None:
        keep[:, call.video] = video_keep
    if call.text_valid is not None:
        keep[:, call.text] = call.text_valid.to(keep.device)
    return keep[:, None, None, :]


class ValueWarp:
    """Eq. 7-9: video values become M * V_ref[flow] + (1 - M) * V_gen; text values untouched."""

    name = "value_warp"
    needs_reference_keys = False

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, plan: WarpPlan) -> torch.Tensor:
        # torch.where keeps V_gen exactly where the mask is off, so an empty mask changes nothing, and
        # no `mask.any()` check (a host sync per layer) is needed. Written into the call's own values
        # (in place): no batch-sized copy of V at the peak of the forward.
        video = call.value[:, :, call.video]
        warped = ref.value[:, :, plan.flow].to(video.dtype)  # (1, heads, N, d): shared by the CFG halves
        torch.where(plan.mask[None, None, :, None], warped, video, out=video)
        call.rotate_(call.query, call.key)
        return call.attend(call.query, call.key, call.value)


BUILTIN_INJECTORS: dict[str, type] = {ValueWarp.name: ValueWarp}


@hookimpl
def make_injector(name: str, config: WarpConfig) -> Injector | None:
    cls = BUILTIN_INJECTORS.get(name)
    return None if cls is None else cls()


@hookimpl
def injector_names() -> list[str]:
    return sorted(BUILTIN_INJECTORS)
