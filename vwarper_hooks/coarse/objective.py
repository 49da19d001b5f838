"""The denoising objective of stage 1, chosen by what the pipeline's scheduler is (not by model family).

- DDPM-style schedulers (``alphas_cumprod``; epsilon or v-prediction, e.g. DDIM with
  v-prediction): draw an integer timestep t, ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` with
  ``a_t = alphas_cumprod[t]``; the target is ``noise`` (epsilon) or ``sqrt(a_t) noise - sqrt(1 - a_t) x0`` (v).
- Flow matching (FlowMatch* schedulers, or any scheduler with ``use_flow_sigmas`` or
  ``prediction_type == "flow_prediction"``): draw ``s ~ U(0, 1)``,
  ``x_t = (1 - s) x0 + s noise``, the target is the velocity ``noise - x0`` and the model's timestep
  is ``s * num_train_timesteps`` (the pipelines' ``timestep = sigma * 1000``).

Anything else is refused with a `ConfigError` that says what the trainer understands.

Two-expert pipelines (Wan 2.2 A14B): stage 1 trains the LoRA of the first expert (``pipe.transformer``, the
noisy steps, where the paper's warp window falls), so timesteps are drawn at or above the boundary only
(``min_timestep``); see the README, "Other architectures".
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..fine.inversion import is_flow_matching

DDPM_PREDICTIONS = ("epsilon", "v_prediction")


class Objective(ABC):
    """How one training step noises clean latents and what the model must predict for them."""

    @abstractmethod
    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch,) model timesteps on the CPU, drawn from `generator` (one draw per sample)."""

    @abstractmethod
    def noisy_and_target(
        self, x0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, regression target) for clean latents `x0` (B, ...), `noise` like it and (B,) timesteps."""

    def _per_sample(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1, ..., 1) on `like`'s device, to broadcast over one sample's latents."""
        return values.view(-1, *([1] * (like.dim() - 1))).to(like.device)


@dataclass(frozen=True)
class DdpmObjective(Objective):
    """Noise (epsilon) or velocity (v) prediction over a DDPM schedule ``alphas_cumprod``."""

    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float32, CPU
    prediction_type: str
    min_timestep: float = 0.0  # draws start here (two experts: the first expert's share)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        low = min(int(math.ceil(self.min_timestep)), len(self.alphas_cumprod) - 1)
        return torch.randint(low, len(self.alphas_cumprod), (batch,), generator=generator)

    def noisy_and_target(
        self, x0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a = self._per_sample(self.alphas_cumprod[timestep.cpu()], x0)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if self.prediction_type == "v_prediction" else noise
        return noisy, target


@dataclass(frozen=True)
class FlowMatchingObjective(Objective):
    """Rectified flow: velocity ``noise - x0`` at a uniformly drawn noise level ``s``."""

    num_train_timesteps: int
    min_timestep: float = 0.0  # draws start here (two experts: the first expert's share)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        low = self.min_timestep / self.num_train_timesteps
        return (low + torch.rand((batch,), generator=generator) * (1 - low)) * self.num_train_timesteps

    def noisy_and_target(
        self, x0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._per_sample(timestep.float().cpu() / self.num_train_timesteps, x0)
        return (1 - s) * x0 + s * noise, noise - x0


def objective_for(scheduler: Any, min_timestep: float = 0.0) -> Objective:
    """The objective `scheduler` was trained with, or a `ConfigError` saying which ones are understood.

    :param min_timestep: the lowest timestep to draw (`Adapter.expert_boundary` for two experts)."""
    config = getattr(scheduler, "config", None)
    if config is not None and is_flow_matching(scheduler):
        return FlowMatchingObjective(int(getattr(config, "num_train_timesteps", 1000)), min_timestep)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    prediction = getattr(config, "prediction_type", None)
    if alphas is not None and prediction in DDPM_PREDICTIONS:
        return DdpmObjective(torch.as_tensor(alphas).float().cpu(), prediction, min_timestep)
    have = "alphas_cumprod" if alphas is not None else "no alphas_cumprod"
    raise ConfigError([
        f"Expected a scheduler whose training objective the coarse trainer knows (DDPM-style alphas_cumprod "
        f"with prediction_type epsilon or v_prediction, or flow matching: FlowMatch*, use_flow_sigmas or "
        f"prediction_type='flow_prediction'), but got {type(scheduler).__name__} ({have}, "
        f"prediction_type={prediction!r}). Give the pipe the scheduler its model was trained with, or use the "
        "fine stage alone: vwarper.Subject.from_images(...)."
    ])
