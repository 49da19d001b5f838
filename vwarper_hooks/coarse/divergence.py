"""Stage 1 refuses a run that diverges: a non-finite loss, or weights that became non-finite, stop it
at once with a `TrainingDivergedError`, before a checkpoint of that step or a subject is written."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..errors import TrainingDivergedError
from ..files import nonfinite_names
from .config import CoarseConfig


def _advice(config: CoarseConfig) -> str:
    lower = f"lora_lr={config.lora_lr / 10:g}, token_lr={config.token_lr / 10:g}"
    clip = "" if config.max_grad_norm is not None else " and max_grad_norm=1.0"
    where = f" Checkpoints of earlier steps in {config.checkpoint_dir} belong to this run's settings: start the " \
        "new run in another checkpoint_dir." if config.checkpoint_dir is not None else ""
    return f"Nothing of this step was saved. Do train again with lower learning rates ({lower}){clip}.{where}"


def check_loss(config: CoarseConfig, step: int, loss: float) -> None:
    """Refuse a non-finite loss at `step` (1-based)."""
    if not math.isfinite(loss):
        raise TrainingDivergedError(
            f"Expected a finite training loss, but got {loss} at step {step} of {config.steps} (lora_lr="
            f"{config.lora_lr:g}, token_lr={config.token_lr:g}): training diverged. {_advice(config)}",
            step=step,
        )


def check_weights(config: CoarseConfig, step: int, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Refuse trained weights with a NaN or an infinity after `step` (one host read per device)."""
    bad = nonfinite_names(named)
    if bad:
        raise TrainingDivergedError(
            f"Expected finite LoRA and token weights after step {step} of {config.steps}, but got {len(bad)} "
            f"tensor(s) with NaN or inf (e.g. {bad[0]}): training diverged. {_advice(config)}",
            step=step,
        )
