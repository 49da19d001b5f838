"""Per-layer features of one transformer call, for correspondence studies (the paper's fig. 4): every
attention layer's RoPE-free and post-RoPE video Q/K, and its input hidden states.

Used by `vwarper analyze` (apps) and by the learned world's measurements (world); a kit, never imported
by the library.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch

from ..contract.calls import AttentionCall, LayerRouter
from ..plugins import get_adapter

DESCRIPTORS = ("hidden", "qk_raw", "qk_ropefree")
LABELS = {"hidden": "intermediate features", "qk_raw": "raw Q/K (post-RoPE)", "qk_ropefree": "RoPE-free Q/K"}


class _Capture(LayerRouter):
    """Router that keeps every layer's RoPE-free and post-RoPE video Q/K, and the attention inputs."""

    def __init__(self) -> None:
        self.features: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {d: {} for d in DESCRIPTORS}
        self.inputs: dict[int, torch.Tensor] = {}
        self.video: dict[int, slice] = {}

    def wants(self, layer: int) -> bool:
        return True

    def process(self, call: AttentionCall) -> torch.Tensor:
        v = call.video
        self.video[call.layer] = v
        self.features["qk_ropefree"][call.layer] = (call.query[:, :, v].clone(), call.key[:, :, v].clone())
        out = call.default()  # rotates query and key in place
        self.features["qk_raw"][call.layer] = (call.query[:, :, v].clone(), call.key[:, :, v].clone())
        return out


def capture_features(pipe: Any, kwargs: dict[str, Any]) -> dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Run ``pipe.transformer(**kwargs)`` once; descriptor -> layer -> (query-like, key-like) ``(B, H, N, d)``."""
    transformer = pipe.transformer
    adapter = get_adapter(transformer)
    router = _Capture()
    layers = adapter.attention_layers(transformer)

    def grab(index: int) -> Callable:
        def hook(module: Any, args: tuple, kw: dict) -> None:
            hidden = kw.get("hidden_states", args[0] if args else None)
            router.inputs[index] = hidden.detach().clone()

        return hook

    with ExitStack() as stack, torch.no_grad():
        stack.callback(adapter.install(transformer, router))
        for i, module in enumerate(layers):
            stack.callback(module.register_forward_pre_hook(grab(i), with_kwargs=True).remove)
        transformer(**kwargs)
    n = next(iter(router.features["qk_ropefree"].values()))[0].shape[2]
    for i, hidden in router.inputs.items():
        video = hidden if hidden.shape[1] == n else hidden[:, router.video[i]]
        video = torch.nn.functional.normalize(video.float(), dim=-1)[:, None]  # cosine matching, one "head"
        router.features["hidden"][i] = (video, video)
    return router.features
