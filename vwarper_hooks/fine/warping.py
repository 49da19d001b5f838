"""Value warping (paper eq. 7-9): the paper's `Injector` (`vwarper_hooks.contract.parts`).

Each injector turns one generation-branch `AttentionCall` plus the reference branch's features
of the same layer and step into the attention output. They are registered through the
`register_injectors` hook, so plugins can add more; `WarpConfig.injector` picks one by name.

CFG: the flow and mask come from the conditional sample and the same warped reference values are
used for both halves of the batch (each half keeps its own values outside the mask). Warping only
the conditional half would make guidance amplify the difference between warped and unwarped
values, i.e. exaggerate the reference appearance by the guidance scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import WarpConfig
from ..contract.calls import AttentionCall
from ..contract.hookspecs import hookimpl
from ..contract.parts import Injector, ReferenceFeatures, TokenMap

#: the name of `TokenMap` before 0.3 (kept for injectors written against it; goes away in 0.4)
WarpPlan = TokenMap


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

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, tokens: TokenMap) -> torch.Tensor:
        # torch.where keeps V_gen exactly where the mask is off, so an empty mask changes nothing, and
        # no `mask.any()` check (a host sync per layer) is needed. Written into the call's own values
        # (in place): no batch-sized copy of V at the peak of the forward.
        video = call.value[:, :, call.video]
        warped = ref.value[:, :, tokens.flow].to(video.dtype)  # (1, heads, N, d): shared by the CFG halves
        torch.where(tokens.mask[None, None, :, None], warped, video, out=video)
        call.rotate_(call.query, call.key)
        return call.attend(call.query, call.key, call.value)


BUILTIN_INJECTORS: dict[str, type] = {ValueWarp.name: ValueWarp}


@hookimpl
def register_injectors(register: Callable[[str, Callable[[WarpConfig], Injector]], None]) -> None:
    for name, cls in BUILTIN_INJECTORS.items():
        register(name, lambda _config, cls=cls: cls())
