"""The reference branch: the reference image repeated over time, VAE-encoded and DDIM-inverted.

Inversion follows the pipeline's own timesteps (v-prediction or epsilon, from the scheduler
config) with the deterministic DDIM update. `trajectory[i]` is the reference latent at
``pipe.scheduler.timesteps[i]``, so at step i the reference branch reads the inverted latent of
that very timestep (no drift from re-denoising). Results are cached by everything they depend on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .errors import SubjectError

logger = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_image(image: Image.Image, what: str = "reference image") -> Image.Image:
    """Refuse non-RGB inputs with a clear error (RGBA / palette / grey are not guessed at)."""
    if not isinstance(image, Image.Image):
        raise SubjectError(f"Expected a PIL.Image.Image as {what}, but got {type(image).__name__}. Open it with PIL.")
    if image.mode != "RGB":
        raise SubjectError(
            f"Expected an RGB {what}, but got mode {image.mode!r}. Convert it with image.convert('RGB')."
        )
    return image


def resize_center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale to cover (height, width), then crop the centre; logs when the size changes."""
    check_image(image)
    if image.size == (width, height):
        return image
    logger.info("reference image %sx%s resized and cropped to %sx%s", *image.size, width, height)
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def image_to_video(image: Image.Image, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(1, 3, frames, H, W) in [-1, 1]: the image repeated along time."""
    pixels = np.asarray(resize_center_crop(image, height, width), dtype=np.float32) / 127.5 - 1.0
    frame = torch.from_numpy(pixels).permute(2, 0, 1)
    return frame[None, :, None].expand(1, 3, num_frames, height, width).contiguous()


def ddim_invert(
    denoise: Denoiser,
    clean: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: float,
    prediction_type: str,
    refine: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion; returns (steps, *clean.shape) aligned with `timesteps` (descending).

    Walks the timesteps upwards. Plain DDIM inversion (``refine=0``, the paper's) evaluates the
    model at the next, noisier timestep on the current latent. ``refine=k`` then runs k
    fixed-point iterations that re-evaluate the model on the new latent itself and solve the DDIM
    step for it, so regenerating from the result retraces the trajectory almost exactly.
    """
    if prediction_type not in ("v_prediction", "epsilon"):
        raise SubjectError(f"Expected a v_prediction or epsilon scheduler, but got {prediction_type!r}.")
    ascending = list(reversed(timesteps.tolist()))
    latent = clean.float()
    alpha_in = float(final_alpha_cumprod)
    out = []
    for i, t in enumerate(ascending):
        alpha_out = float(alphas_cumprod[int(t)])
        t_batch = torch.tensor([t], device=clean.device)
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
