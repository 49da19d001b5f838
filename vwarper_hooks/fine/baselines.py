"""The appendix B.2 baselines as injectors: key/value replacement and token concatenation.

Both read the reference branch's post-RoPE keys as well as its values, and are picked by
``WarpConfig(injector="kv_replace")`` or ``"concat"``; they reproduce the paper's comparison rows.
"""

from __future__ import annotations

import torch

from ..adapter import AttentionCall
from ..config import WarpConfig
from ..hookspecs import hookimpl
from .warping import Injector, ReferenceFeatures, WarpPlan, key_mask


class KeyValueReplace:
    """Appendix B.2 eq. 10-12: reference-conditioned attention inside the mask, generation outside."""

    name = "kv_replace"
    needs_reference_keys = True

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, plan: WarpPlan) -> torch.Tensor:
        call.rotate_(call.query, call.key)
        q, k, v = call.query, call.key, call.value
        stock = call.attend(q, k, v)
        if not bool(plan.mask.any()):  # a host read per layer: acceptable for this ablation baseline only
            return stock
        batch = q.shape[0]
        k_ref, v_ref = k.clone(), v.clone()
        k_ref[:, :, call.video] = ref.key.to(k.dtype).expand(batch, -1, -1, -1)
        v_ref[:, :, call.video] = ref.value.to(v.dtype).expand(batch, -1, -1, -1)
        f_ref = _masked_attend(q, k_ref, v_ref, key_mask(call, plan.ref_mask))
        f_gen = _masked_attend(q, k, v, key_mask(call, ~plan.mask))
        rows = plan.mask[None, None, :, None]
        out = stock.clone()
        out[:, :, call.video] = torch.where(rows, f_ref[:, :, call.video], f_gen[:, :, call.video])
        return out


def _masked_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)


class TokenConcat:
    """Appendix B.2: reference video tokens appended to the keys/values, original positions kept.

    As in the paper's baseline there is no correspondence and no mask: `plan` is not used, so
    `WarpConfig.mask` / `tau_fg` do not change what this injector does.
    """

    name = "concat"
    needs_reference_keys = True

    def attend(self, call: AttentionCall, ref: ReferenceFeatures, plan: WarpPlan) -> torch.Tensor:
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
def make_injector(name: str, config: WarpConfig) -> Injector | None:
    cls = BASELINES.get(name)
    return None if cls is None else cls()


@hookimpl
def injector_names() -> list[str]:
    return sorted(BASELINES)
