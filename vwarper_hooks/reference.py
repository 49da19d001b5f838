"""The reference branch: the reference image repeated over time, VAE-encoded and DDIM-inverted.

Inversion follows the pipeline's own timesteps (v-prediction or epsilon, from the scheduler
config) with the deterministic DDIM update. `trajectory[i]` is the reference latent at
``pipe.scheduler.timesteps[i]``, so at step i the reference branch reads the inverted latent of
that very timestep (no drift from re-denoising). Results are cached by everything they depend on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

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


def image_digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()[:16]


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


@dataclass
class ReferenceState:
    """Everything the reference branch needs for one generation setting."""

    text: dict[str, torch.Tensor]  # text conditioning as forward kwargs (batch 1)
    clean: torch.Tensor  # (1, *latent) VAE latent of the repeated image
    trajectory: torch.Tensor  # (steps, 1, *latent)

    def latents_at(self, step: int) -> torch.Tensor:
        return self.trajectory[step]


class ReferenceCache:
    """In-memory cache of `ReferenceState`, keyed by what the state depends on."""

    def __init__(self) -> None:
        self._states: dict[tuple, ReferenceState] = {}
        self.hits = 0
        self.misses = 0

    def get_or_make(self, key: tuple, make: Callable[[], ReferenceState]) -> ReferenceState:
        if key in self._states:
            self.hits += 1
            return self._states[key]
        self.misses += 1
        state = make()
        self._states[key] = state
        return state

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


def cache_key(
    image: Image.Image,
    prompt: str,
    timesteps: torch.Tensor,
    call_kwargs: dict,
    model: torch.nn.Module,
    extra: tuple = (),
) -> tuple:
    """What a reference state depends on: image, prompt, timesteps, the generation call's tensor
    shapes (latent size, text length), dtypes and devices, the model object, and `extra`."""
    shapes = tuple(
        sorted(
            (k, tuple(v.shape[1:]), str(v.dtype), str(v.device)) for k, v in call_kwargs.items() if torch.is_tensor(v)
        )
    )
    return (image_digest(image), prompt, tuple(timesteps.tolist()), shapes, id(model), *extra)
