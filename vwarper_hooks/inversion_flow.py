"""Reference-branch inversion for flow-matching schedulers (HunyuanVideo, Wan), and the dispatcher.

Flow matching (rectified flow) writes the noisy latent at noise level sigma as
``x = (1 - sigma) x0 + sigma * noise`` and the model predicts the velocity ``v = noise - x0``;
the pipelines step ``x_next = x + (sigma_next - sigma) * v(x, t)``. Inversion walks the same
sigmas upwards, from the clean latent (sigma = 0) to the first, noisiest timestep:

    x_i = x_{i+1} + (sigma_i - sigma_{i+1}) * v(x_i, t_i)

Plain inversion (``refine=0``, the analogue of the paper's DDIM inversion) evaluates the model on
the lower latent ``x_{i+1}`` at the noisier timestep ``t_i``; ``refine=k`` re-evaluates it on the
new latent k times (fixed point), so that an Euler regeneration retraces the trajectory.
`invert_reference` picks DDIM or flow inversion from the pipeline's scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import SubjectError
from .reference import Denoiser, ddim_invert

FLOW_PREDICTION = "flow_prediction"


def is_flow_matching(scheduler: Any) -> bool:
    """True for flow-matching schedulers (FlowMatchEuler*, UniPC / DPM with flow sigmas)."""
    config = getattr(scheduler, "config", {})
    if getattr(config, "prediction_type", None) == FLOW_PREDICTION or getattr(config, "use_flow_sigmas", False):
        return True
    return "FlowMatch" in type(scheduler).__name__


def flow_sigmas(scheduler: Any) -> torch.Tensor:
    """(steps + 1,) descending sigmas aligned with ``scheduler.timesteps``, ending at 0 (the clean latent)."""
    steps = len(scheduler.timesteps)
    sigmas = torch.as_tensor(getattr(scheduler, "sigmas", None), dtype=torch.float64).reshape(-1)
    if sigmas.numel() < steps:
        raise SubjectError(
            f"Expected the scheduler to hold at least {steps} sigmas after set_timesteps, but got "
            f"{sigmas.numel()}. Use a flow-matching scheduler that exposes `sigmas` (FlowMatchEulerDiscreteScheduler)."
        )
    sigmas = sigmas[:steps]
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def flow_invert(
    denoise: Denoiser,
    clean: torch.Tensor,
    timesteps: torch.Tensor,
    sigmas: torch.Tensor,
    refine: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Euler inversion of a flow-matching model; returns (steps, *clean.shape) aligned with `timesteps`.

    :param timesteps: the pipeline's timesteps (descending), passed to the model as they are.
    :param sigmas: (steps + 1,) descending noise levels, ``sigmas[i]`` belonging to ``timesteps[i]``, last 0.
    """
    steps = len(timesteps)
    if sigmas.numel() != steps + 1:
        raise ValueError(f"Expected {steps + 1} sigmas, but got {sigmas.numel()}.")
    latent = clean.float()
    out: list[torch.Tensor] = []
    for k, i in enumerate(range(steps - 1, -1, -1)):  # from the least noisy step up to the noisiest
        t_batch = timesteps[i].reshape(1).to(clean.device)
        delta = float(sigmas[i] - sigmas[i + 1])  # > 0: going up in noise
        velocity = denoise(latent.to(clean.dtype), t_batch).float()
        target = latent + delta * velocity
        for _ in range(refine):
            velocity = denoise(target.to(clean.dtype), t_batch).float()
            target = latent + delta * velocity
        latent = target
        out.append(latent.to(clean.dtype))
        if progress is not None:
            progress(k)
    return torch.stack(out[::-1])


def invert_reference(
    scheduler: Any,
    denoise: Denoiser,
    clean: torch.Tensor,
    refine: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Invert `clean` over ``scheduler.timesteps`` with the scheme that fits the scheduler (DDIM or flow)."""
    timesteps = scheduler.timesteps
    if is_flow_matching(scheduler):
        return flow_invert(denoise, clean, timesteps, flow_sigmas(scheduler), refine=refine, progress=progress)
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise SubjectError(
            f"Expected a DDIM-style (alphas_cumprod) or flow-matching scheduler, but got {type(scheduler).__name__}. "
            "Use the pipeline's default scheduler."
        )
    return ddim_invert(
        denoise,
        clean,
        timesteps,
        scheduler.alphas_cumprod,
        float(getattr(scheduler, "final_alpha_cumprod", 1.0)),
        scheduler.config.prediction_type,
        refine=refine,
        progress=progress,
    )
