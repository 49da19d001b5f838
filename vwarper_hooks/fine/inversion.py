"""Inversion of the reference latent over the pipeline's own timesteps: DDIM (paper 4.2) and flow matching.

DDIM (CogVideoX; v-prediction or epsilon, from the scheduler config) uses the deterministic DDIM
update. `trajectory[i]` is the reference latent at ``pipe.scheduler.timesteps[i]``, so at step i
the reference branch reads the inverted latent of that very timestep (no drift from re-denoising).

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

from ..errors import SubjectError

#: ``denoise(latents, t)``: the model's prediction; `t` is a (1,) timestep on the CPU (the host scheduler's),
#: which the denoiser moves to its device (and may read freely: choosing an expert costs no device read)
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

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
    first: int = 0,
) -> torch.Tensor:
    """Euler inversion of a flow-matching model; returns (steps - first, *clean.shape): the latents of
    ``timesteps[first:]`` (steps before `first` are not computed).

    :param timesteps: the pipeline's timesteps (descending), passed to the model as they are.
    :param sigmas: (steps + 1,) descending noise levels, ``sigmas[i]`` belonging to ``timesteps[i]``, last 0.
    """
    steps = len(timesteps)
    if sigmas.numel() != steps + 1:
        raise ValueError(f"Expected {steps + 1} sigmas, but got {sigmas.numel()}.")
    latent = clean.float()
    out: list[torch.Tensor] = []
    for k, i in enumerate(range(steps - 1, first - 1, -1)):  # from the least noisy step up to `first`
        t_batch = timesteps[i].reshape(1).cpu()  # the denoiser moves it
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


def ddim_invert(
    denoise: Denoiser,
    clean: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: float,
    prediction_type: str,
    refine: int = 0,
    progress: Callable[[int], None] | None = None,
    first: int = 0,
) -> torch.Tensor:
    """Deterministic DDIM inversion; returns (steps - first, *clean.shape): the latents of
    ``timesteps[first:]`` (descending; the noisier steps before `first` are not computed).

    Walks the timesteps upwards. Plain DDIM inversion (``refine=0``, the paper's) evaluates the
    model at the next, noisier timestep on the current latent. ``refine=k`` then runs k
    fixed-point iterations that re-evaluate the model on the new latent itself and solve the DDIM
    step for it, so regenerating from the result retraces the trajectory almost exactly.
    """
    if prediction_type not in ("v_prediction", "epsilon"):
        raise SubjectError(f"Expected a v_prediction or epsilon scheduler, but got {prediction_type!r}.")
    ascending = list(reversed(timesteps.tolist()))[: len(timesteps) - first]
    latent = clean.float()
    alpha_in = float(final_alpha_cumprod)
    out = []
    for i, t in enumerate(ascending):
        alpha_out = float(alphas_cumprod[int(t)])
        t_batch = torch.tensor([t])  # on the CPU: the denoiser moves it
        model = denoise(latent.to(clean.dtype), t_batch).float()
        x0, eps = _split(latent, model, alpha_in, prediction_type)
        target = _ddim_step(x0, eps, alpha_out)
        for _ in range(refine):
            # Solve  latent = step_down(target, model(target, t))  for target, with model held fixed.
            model = denoise(target.to(clean.dtype), t_batch).float()
            target = _solve_step_up(latent, model, alpha_out, alpha_in, prediction_type)
        latent = target
        out.append(latent.to(clean.dtype))
        alpha_in = alpha_out
        if progress is not None:
            progress(i)
    return torch.stack(out[::-1])


def _split(
    x: torch.Tensor, model: torch.Tensor, alpha: float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted x0, predicted noise) of latent `x` at noise level `alpha`."""
    a, b = alpha**0.5, (1 - alpha) ** 0.5
    if prediction_type == "v_prediction":
        return a * x - b * model, a * model + b * x
    return (x - b * model) / a, model


def _ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha**0.5 * x0 + (1 - alpha) ** 0.5 * eps


def _solve_step_up(
    lower: torch.Tensor, model: torch.Tensor, alpha_up: float, alpha_low: float, prediction_type: str
) -> torch.Tensor:
    """The latent x at `alpha_up` whose DDIM step down (with this model output) lands on `lower`."""
    a, b = alpha_up**0.5, (1 - alpha_up) ** 0.5
    c, d = alpha_low**0.5, (1 - alpha_low) ** 0.5
    if prediction_type == "v_prediction":  # lower = (c a + d b) x + (d a - c b) model
        return (lower - (d * a - c * b) * model) / (c * a + d * b)
    # epsilon: lower = c (x - b m) / a + d m
    return (lower - (d - c * b / a) * model) * a / c


def invert_reference(
    scheduler: Any,
    denoise: Denoiser,
    clean: torch.Tensor,
    refine: int = 0,
    progress: Callable[[int], None] | None = None,
    first: int = 0,
) -> torch.Tensor:
    """Invert `clean` over ``scheduler.timesteps[first:]`` with the scheme that fits the scheduler (DDIM or
    flow); steps before `first` (noisier than any step whose latent is read) are never computed."""
    timesteps = scheduler.timesteps
    if is_flow_matching(scheduler):
        sigmas = flow_sigmas(scheduler)
        return flow_invert(denoise, clean, timesteps, sigmas, refine=refine, progress=progress, first=first)
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
        first=first,
    )
