"""Probes of the conformance kit: recording routers, stock-model hooks and tensor comparisons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..contract.calls import AttentionCall

ATOL, RTOL = 1e-5, 1e-4


class _Recorder:
    """A router that records (clones) the calls of chosen layers and runs the stock computation."""

    def __init__(self, layers: set[int], fail: bool = False) -> None:
        self.layers, self.fail = layers, fail
        self.calls: dict[int, dict[str, Any]] = {}
        self.text: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def wants(self, layer: int) -> bool:
        return layer in self.layers

    def process(self, call: AttentionCall) -> torch.Tensor:
        if self.fail:
            raise _Boom(f"raised inside layer {call.layer}")
        first = call.layer not in self.calls
        if first:
            self.calls[call.layer] = dict(
                q=call.query.clone(),
                k=call.key.clone(),
                v=call.value.clone(),
                q_rope=call.rope(call.query[:, :, call.video].clone()),
                text=call.text,
                video=call.video,
            )
        out = call.default()
        if first:  # what attend() really saw after rotate_: rope() must agree with it
            self.calls[call.layer]["q_rotated"] = call.query[:, :, call.video].clone()
        return out

    def wants_text(self, layer: int) -> bool:
        return layer in self.layers

    def observe_text_attention(
        self, layer: int, query_video: torch.Tensor, key_text: torch.Tensor, text_valid: torch.Tensor | None = None
    ) -> None:
        if self.fail:
            raise _Boom(f"raised inside the text attention of layer {layer}")
        self.text.setdefault(layer, (query_video.clone(), key_text.clone()))


class _Boom(RuntimeError):
    pass


def _hook_outputs(modules: dict[str, nn.Module], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Outputs (cloned, first call) of named submodules during `run()`."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in modules.items():

        def hook(_m: nn.Module, _a: Any, out: Any, _name: str = name) -> None:
            got.setdefault(_name, out.detach().clone())

        handles.append(module.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return got


def _first(attn: nn.Module, *names: str) -> nn.Module | None:
    return next((m for m in (getattr(attn, n, None) for n in names) if isinstance(m, nn.Module)), None)


def _bhnd(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) / (B, N, H, D) / (B, H, N, D) -> (B, H, N, D)."""
    if x.dim() == 3:
        return x.unflatten(2, (heads, -1)).transpose(1, 2)
    return x.transpose(1, 2) if x.shape[2] == heads and x.shape[1] != heads else x


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, problems: list[str]) -> None:
    if got.shape != want.shape:
        problems.append(f"{what}: expected shape {tuple(want.shape)}, but got {tuple(got.shape)}")
    elif not torch.allclose(got.float(), want.float(), atol=ATOL, rtol=RTOL):
        diff = float((got.float() - want.float()).abs().max())
        problems.append(f"{what}: differs from the recomputation by up to {diff:.3g}")


class _PassThrough(_Recorder):
    def __init__(self) -> None:
        super().__init__(set())

    def wants(self, layer: int) -> bool:
        return True

    def process(self, call: AttentionCall) -> torch.Tensor:
        return call.default()

    def wants_text(self, layer: int) -> bool:
        return True

    def observe_text_attention(
        self, layer: int, query_video: torch.Tensor, key_text: torch.Tensor, text_valid: torch.Tensor | None = None
    ) -> None:
        return None


def _state(case: Any) -> tuple[list[int], int]:
    modules = list(case.transformer.modules())
    processors = [id(m.processor) for m in modules if hasattr(m, "processor")]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)
    return processors, hooks
