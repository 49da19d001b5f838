"""Helpers for adapters' attention processors: install them all-or-nothing, check what they replace,
and attend exactly as the stock diffusers processor would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

try:  # diffusers >= 0.35: the attention backend dispatcher stock processors use
    from diffusers.models.attention_dispatch import dispatch_attention_fn
except ImportError:  # pragma: no cover - older diffusers: plain SDPA on (B, N, H, D) inputs
    import torch.nn.functional as F

    def dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=None):
        """SDPA on (batch, tokens, heads, head_dim) tensors, as diffusers' dispatcher takes them."""
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask
        )
        return out.transpose(1, 2)



def stock_attend(original: Any, attention_mask: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    """``attend(q, k, v)`` on (batch, heads, tokens, head_dim) tensors as a stock diffusers processor
    computes it: its attention backend, the model's mask, no dropout."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = dispatch_attention_fn(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=getattr(original, "_attention_backend", None),
        )
        return out.transpose(1, 2)

    return attend


def swap_processors(modules: list[nn.Module], make: Callable[[int, Any], Any]) -> Callable[[], None]:
    """Give ``modules[i]`` the processor ``make(i, original)``; returns the function that puts the
    originals back. All or nothing: if one swap fails, those already made are undone first."""
    originals = [module.processor for module in modules]

    def undo(count: int = len(modules)) -> None:
        for module, original in zip(modules[:count], originals[:count], strict=True):
            module.set_processor(original)

    done = 0
    try:
        for i, module in enumerate(modules):
            module.set_processor(make(i, originals[i]))
            done = i + 1
    except BaseException:
        undo(done)
        raise
    return undo


def processor_problems(modules: list[nn.Module], stock: str, ours: tuple[type, ...]) -> list[str]:
    """Why `modules` cannot take our processors: fused Q/K/V, or a processor that is neither the
    stock one (by class name `stock`) nor one of `ours` (an open injection, reported by inject)."""
    for i, attn in enumerate(modules):
        if getattr(attn, "fused_projections", False):
            return [
                f"Expected unfused Q/K/V projections, but layer {i} has fused ones. "
                "Call transformer.unfuse_qkv_projections() before inject()."
            ]
        processor = attn.processor
        if not isinstance(processor, ours) and type(processor).__name__ != stock:
            return [
                f"Expected {stock} on every attention, but layer {i} uses {type(processor).__name__}. "
                f"Restore it (transformer.set_attn_processor({stock}()) or reload the transformer)."
            ]
    return []


def attend_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and each query's log-sum-exp over the keys, from one fused kernel.

    Tensors are (batch, heads, tokens, head_dim); `keep` is a (batch, 1, 1, keys) bool key mask or
    None. The flash kernel for CPU and the memory-efficient kernel elsewhere (CUDA, and the meta
    device, where the FLOP counter sees it) return the log-sum-exp they compute anyway, so the
    joint-softmax foreground score costs no second attention pass. A kernel that refuses the inputs
    falls back to the math path plus a streamed log-sum-exp (one more Q K^T).
    """
    bias = None if keep is None else torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(
        ~keep.to(q.device), float("-inf")
    )
    n = q.shape[2]
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias)
        else:
            if bias is not None:
                bias = bias.expand(q.shape[0], q.shape[1], n, k.shape[2])
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[:2]
        return out, lse[..., :n].float()
    except RuntimeError:  # pragma: no cover - a backend without these kernels
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        scale = q.shape[-1] ** -0.5
        lse = torch.cat([
            torch.logsumexp((q[:, :, i : i + 1024] @ k.transpose(-1, -2) * scale).float()
                            + (0 if bias is None else bias.float()), dim=-1)
            for i in range(0, n, 1024)
        ], dim=2)
        return out, lse
