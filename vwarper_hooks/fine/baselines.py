"""The appendix B.2 baselines as injectors: key/value replacement and token concatenation.

Both read the reference branch's post-RoPE keys as well as its values, and are picked by
``WarpConfig(injector="kv_replace")`` or ``"concat"``; they reproduce the paper's comparison rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import WarpConfig
from ..contract.calls import AttentionCall
from ..contract.hookspecs import hookimpl
from ..contract.parts import Injector, ReferenceFeatures, TokenMap
from .warping import key_mask


class KeyValueReplace:
    """Appendix B.2 eq. 10-12: reference-conditioned attention inside the mask, generation outside."""

    name = "kv_replace"
    needs_reference_keys = True

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, tokens: TokenMap) -> torch.Tensor:
        call.rotate_(call.query, call.key)
        q, k, v = call.query, call.key, call.value
        stock = call.attend(q, k, v)
        if not bool(tokens.mask.any()):  # a host read per layer: acceptable for this ablation baseline only
            return stock
        batch = q.shape[0]
        k_ref, v_ref = k.clone(), v.clone()
        k_ref[:, :, call.video] = ref.key.to(k.dtype).expand(batch, -1, -1, -1)
        v_ref[:, :, call.video] = ref.value.to(v.dtype).expand(batch, -1, -1, -1)
        f_ref = _masked_attend(q, k_ref, v_ref, key_mask(call, tokens.ref_mask))
        f_gen = _masked_attend(q, k, v, key_mask(call, ~tokens.mask))
        rows = tokens.mask[None, None, :, None]
        out = stock.clone()
        out[:, :, call.video] = torch.where(rows, f_ref[:, :, call.video], f_gen[:, :, call.video])
        return out


def _masked_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)


class TokenConcat:
    """Appendix B.2: reference video tokens appended to the keys/values, original positions kept.

    As in the paper's baseline there is no correspondence and no mask: `tokens` is not used, so
    `WarpConfig.mask` / `tau_fg` do not change what this injector does.
    """

    name = "concat"
    needs_reference_keys = True

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, tokens: TokenMap) -> torch.Tensor:
        call.rotate_(call.query, call.key)
        batch = call.query.shape[0]
        k = torch.cat([call.key, ref.key.to(call.key.dtype).expand(batch, -1, -1, -1)], dim=2)
        v = torch.cat([call.value, ref.value.to(call.value.dtype).expand(batch, -1, -1, -1)], dim=2)
        keep = None
        if call.text_valid is not None:  # the model masks padded text keys: so do we; reference keys all count
            extra = torch.ones(call.key.shape[0], 1, 1, ref.key.shape[2], dtype=torch.bool, device=k.device)
            keep = torch.cat([key_mask(call), extra], dim=-1)
        return _masked_attend(call.query, k, v, keep)


BASELINES: dict[str, type] = {cls.name: cls for cls in (KeyValueReplace, TokenConcat)}


@hookimpl
def register_injectors(register: Callable[[str, Callable[[WarpConfig], Injector]], None]) -> None:
    for name, cls in BASELINES.items():
        register(name, lambda _config, cls=cls: cls())
