"""What the conformance kit runs on: a `ConformanceCase` (an adapter, a tiny transformer it claims, one
forward call's kwargs), built from a tiny pipeline's first denoising call (`case_from_pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..contract.adapter import Adapter
from ..plugins import get_adapter
from .tiny_models import tiny_call_kwargs


@dataclass
class ConformanceCase:
    """What the kit runs on: an adapter, a tiny transformer it claims, and one forward call's kwargs."""

    adapter: Adapter
    transformer: nn.Module
    inputs: dict[str, Any]
    #: forward kwarg holding the text tokens (None: the model takes no text)
    text_key: str | None = "encoder_hidden_states"
    #: layers whose capture is compared (default: first and last)
    layers: tuple[int, ...] | None = None

    def forward(self, **overrides: Any) -> torch.Tensor:
        kwargs = dict(self.inputs)
        kwargs.update(overrides)
        kwargs["return_dict"] = False
        with torch.no_grad():
            return self.transformer(**kwargs)[0]

    def latents(self) -> torch.Tensor:
        return self.adapter.latents(self.inputs)

    def with_latents(self, latents: torch.Tensor) -> dict[str, Any]:
        """The forward kwargs that change with the latents (`Adapter.with_latents`), as `forward` overrides."""
        return {k: v for k, v in self.adapter.with_latents(self.inputs, latents).items() if v is not self.inputs.get(k)}


class _Captured(Exception):
    pass


def forward_inputs(pipe: Any, **call_kwargs: Any) -> dict[str, Any]:
    """The transformer kwargs of the first denoising call of ``pipe(**call_kwargs)`` (the call stops there)."""
    got: dict[str, Any] = {}

    def grab(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
        got.update({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        raise _Captured

    handle = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe(**tiny_call_kwargs(**call_kwargs))
    except _Captured:
        pass
    finally:
        handle.remove()
    got.pop("return_dict", None)
    return got


def case_from_pipeline(pipe: Any, adapter: Adapter | None = None, **call_kwargs: Any) -> ConformanceCase:
    """A `ConformanceCase` for a (tiny) pipeline's transformer, with the inputs of its first denoising call."""
    adapter = adapter or get_adapter(pipe.transformer)
    return ConformanceCase(adapter, pipe.transformer, forward_inputs(pipe, **call_kwargs))
