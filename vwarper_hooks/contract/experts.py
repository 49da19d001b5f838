"""Pipelines with two experts (Wan 2.2 A14B): ``pipe.transformer`` denoises the noisy steps and
``pipe.transformer_2`` the rest, switching at `Adapter.expert_boundary` (a timestep). V-Warper routes both:
every forward of the reference branch and of its inversion runs the expert the pipeline itself would run
at that timestep, so both branches of a step always share an expert.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .adapter import Adapter


def experts(adapter: Adapter, pipe: Any) -> list[nn.Module]:
    """The transformers `pipe` calls while denoising, the first (noisiest steps) first."""
    found = [pipe.transformer]
    if adapter.expert_boundary(pipe) is not None and pipe.transformer_2 is not pipe.transformer:
        found.append(pipe.transformer_2)  # one model in both slots is routed once
    return found


def expert_for(adapter: Adapter, pipe: Any, timestep: float) -> nn.Module:
    """The transformer `pipe` runs at `timestep` (a host number: no device read), as its own loop picks it."""
    boundary = adapter.expert_boundary(pipe)
    if boundary is None or timestep >= boundary:
        return pipe.transformer
    return pipe.transformer_2
