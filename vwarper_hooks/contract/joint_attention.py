"""The stock diffusers attention arithmetic in pieces, so that an adapter's `routed` keeps only its own.

Every built-in processor does the same five things before the router sees a call: project Q/K/V,
QK-normalise, split heads, lay out the text and video tokens, and attend through diffusers' attention
dispatch with the processor's backend. `joint_qkv` does the first four the way the stock processors
do (same operations, same order: outputs stay bit-identical), `stock_attend` the last, `merge_heads`
undoes the split for the output projections. What stays in a family's file: which tokens come first,
whether text has its own projections, how RoPE rotates, the mask, and the output projections.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

#: where a family QK-normalises: per head after the split (CogVideoX, HunyuanVideo) or over all heads
#: before it (Wan, SkyReels-V2, LTX-Video)
QKNorm = Literal["per_head", "across_heads"]


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=None):
    """SDPA on (batch, tokens, heads, head_dim) tensors, as diffusers' dispatcher takes them."""
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask
    )
    return out.transpose(1, 2)


@functools.cache
def _dispatch_attention_fn() -> Callable[..., torch.Tensor]:
    """diffusers' attention backend dispatcher (>= 0.35), which stock processors use; plain SDPA before.
    Imported on first use: importing vwarper_hooks does not load diffusers."""
    try:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
    except ImportError:  # pragma: no cover - older diffusers
        return _sdpa
    return dispatch_attention_fn


def stock_attend(processor: Any, attention_mask: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    """``attend(q, k, v)`` on (batch, heads, tokens, head_dim) tensors as a stock diffusers processor
    computes it: diffusers' attention dispatch with `processor`'s backend (``_attention_backend``, which
    ``transformer.set_attention_backend`` sets; None: the active default), the model's mask, no dropout."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = _dispatch_attention_fn()(
            q.transpose(1, 2),  # (B, N, H, D), the dispatcher's layout
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=getattr(processor, "_attention_backend", None),
        )
        return out.transpose(1, 2)  # (B, H, N, D)

    return attend


@dataclass
class JointQKV:
    """Q, K, V (batch, heads, tokens, head_dim) of one attention call, RoPE-free (after QK-norm, before
    rotary), and where the text and video tokens sit along the token axis."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    text: slice
    video: slice


def _norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def heads(attn: nn.Module, x: torch.Tensor, projection: str, norm: str | None, qk_norm: QKNorm) -> torch.Tensor:
    """One projection (B, N, H, D) of the tokens `x` (B, N, C): ``attn.<projection>``, then ``attn.<norm>``
    (skipped where None or absent) over all heads before the split or per head after it (`qk_norm`)."""
    out = getattr(attn, projection)(x)  # (B, N, H*D)
    norm_module = getattr(attn, norm, None) if norm else None
    if qk_norm == "across_heads":
        out = _norm(norm_module, out)
    out = out.unflatten(2, (attn.heads, -1))  # (B, N, H, D)
    return _norm(norm_module, out) if qk_norm == "per_head" else out


def project(attn: nn.Module, x: torch.Tensor, qk_norm: QKNorm, added: bool = False) -> tuple[torch.Tensor, ...]:
    """Q, K, V (B, N, H, D) of the tokens `x` (B, N, C), QK-normalised as `qk_norm` says.

    ``added``: the text's own projections of a dual-stream layer (``add_q/k/v_proj``, ``norm_added_q/k``)
    instead of ``to_q/k/v`` and ``norm_q/k``. A norm the layer does not have is skipped.
    """
    if added:
        names = (("add_q_proj", "norm_added_q"), ("add_k_proj", "norm_added_k"), ("add_v_proj", None))
    else:
        names = (("to_q", "norm_q"), ("to_k", "norm_k"), ("to_v", None))
    return tuple(heads(attn, x, projection, norm, qk_norm) for projection, norm in names)


def joint_qkv(
    attn: nn.Module,
    video: torch.Tensor,
    text: torch.Tensor | None = None,
    *,
    text_first: bool = False,
    text_projections: bool = False,
    qk_norm: QKNorm = "per_head",
) -> JointQKV:
    """Q, K, V of one attention call over `video` (B, N_video, C) and `text` (B, N_text, C) tokens.

    :param text: None for a video-only self-attention (Wan, SkyReels-V2, LTX-Video).
    :param text_first: the joint sequence is [text, video] (CogVideoX) rather than [video, text].
    :param text_projections: text has its own projections (dual-stream: HunyuanVideo, HunyuanVideo 1.5);
        else the joint sequence goes through ``to_q/k/v`` as one (CogVideoX, HunyuanVideo's single stream).
    """
    n_video, n_text = video.shape[1], 0 if text is None else text.shape[1]
    if text is None:
        q, k, v = project(attn, video, qk_norm)
    elif text_projections:
        video_qkv, text_qkv = project(attn, video, qk_norm), project(attn, text, qk_norm, added=True)
        parts = (text_qkv, video_qkv) if text_first else (video_qkv, text_qkv)
        q, k, v = (torch.cat(pair, dim=1) for pair in zip(*parts, strict=True))  # (B, N, H, D)
    else:
        q, k, v = project(attn, torch.cat([text, video] if text_first else [video, text], dim=1), qk_norm)
    video_span = slice(n_text, n_text + n_video) if text_first else slice(0, n_video)
    text_span = slice(0, n_text) if text_first else slice(n_video, n_video + n_text)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
    return JointQKV(q, k, v, text_span, video_span)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) attention output -> (B, N, H*D), for the output projections."""
    return x.transpose(1, 2).flatten(2, 3)


def rotate_span(
    rope: Callable[[torch.Tensor], torch.Tensor] | None, span: slice, keys: bool = True
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``rotate_(q, k)``: `rope` applied in place to the tokens `span` of q (and of k, unless ``keys`` is
    False: CogVideoX's cross-attention rotates queries only). None: no rotary embedding, nothing to do."""

    def rotate_(q: torch.Tensor, k: torch.Tensor) -> None:
        if rope is None:
            return
        q[:, :, span] = rope(q[:, :, span])
        if keys:
            k[:, :, span] = rope(k[:, :, span])

    return rotate_
