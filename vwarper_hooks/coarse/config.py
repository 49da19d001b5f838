"""`CoarseConfig`: the settings of stage 1 (coarse appearance adaptation), paper appendix A."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import validation_problems
from ..errors import ConfigError
from ..subject.manifest import lora_scale_problem

#: AdamW's first update is lr / (1 - beta1) = 10 x lr, applied to float32 weights (the largest float32
#: is 3.4e38): above this the step itself cannot be computed, let alone trained with
MAX_LEARNING_RATE = 3.4028234663852886e38 / 10

#: Fields that do not change what a run computes; a checkpoint may be resumed with other values.
RUN_ONLY_FIELDS = frozenset({"steps", "checkpoint_every", "checkpoint_dir"})


class CoarseConfig(BaseModel):
    """Settings of `train_subject` (LoRA on K/V/O + a learnable subject token).

    Defaults follow the paper (appendix A): LoRA rank 128 on the key, value and output
    projections of every attention layer, AdamW, LoRA learning rate 1e-4, token-embedding
    learning rate 5e-4. The paper does not state the number of steps, the batch size, alpha or
    weight decay; ``steps=1000``, ``batch_size=1``, ``alpha=rank`` (LoRA scale 1) and
    ``weight_decay=1e-4`` (the diffusers LoRA scripts' value) are our choices.

    ``mixed_precision="bf16"`` with gradient checkpointing is the setting meant for
    a multi-billion-parameter model on one GPU (see docs/coarse_training.md); use ``"no"`` on CPU for exact,
    deterministic runs. ``fp16`` needs CUDA.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # no inf / nan rates

    steps: int = Field(1000, ge=1, description="optimizer steps in total (over all resumed runs)")
    rank: int = Field(128, ge=1, description="LoRA rank")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; None: equal to rank (scale 1)")
    lora_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the LoRA weights")
    token_lr: float = Field(5e-4, gt=0, description="AdamW learning rate of the subject-token embedding")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay (both parameter groups)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; None: off")
    batch_size: int = Field(1, ge=1, description="images per step (drawn with replacement)")
    seed: int = Field(0, ge=0, description="seed of LoRA init, image/timestep/noise sampling")
    gradient_checkpointing: bool = Field(True, description="recompute transformer blocks in backward")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("bf16", description="autocast of the transformer")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints (with checkpoint_dir)")
    checkpoint_dir: Path | None = Field(None, description="where resumable checkpoints go; None: none")
    height: int | None = Field(None, ge=8, description="training resolution; None: the pipe's default")
    width: int | None = Field(None, ge=8, description="training resolution; None: the pipe's default")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, "CoarseConfig")) from None

    @field_validator("lora_lr", "token_lr")
    @classmethod
    def _adamw_can_step(cls, value: float) -> float:
        if value > MAX_LEARNING_RATE:
            raise ValueError(
                f"Expected a learning rate of at most {MAX_LEARNING_RATE:.3g} (AdamW's first update is 10 x the "
                f"rate, on float32 weights), but got {value:g}: the update itself would overflow. Use e.g. 1e-4."
            )
        return value

    @model_validator(mode="after")
    def _size_pair(self) -> CoarseConfig:
        if (self.height is None) != (self.width is None):
            raise ValueError(
                f"Expected height and width both set or both None, but got height={self.height}, "
                f"width={self.width}. Give both."
            )
        return self

    @model_validator(mode="after")
    def _sane_lora_scale(self) -> CoarseConfig:
        problem = lora_scale_problem(self.rank, self.lora_alpha)
        if problem:
            raise ValueError(f"{problem}. Do leave alpha out (scale 1) or pass one near the rank.")
        return self

    @property
    def lora_alpha(self) -> float:
        """The alpha actually used (rank when `alpha` is None)."""
        return float(self.rank if self.alpha is None else self.alpha)

    def fingerprint(self) -> str:
        """sha256 of the fields that change what training computes (not steps or checkpointing)."""
        data = self.model_dump(mode="json", exclude=set(RUN_ONLY_FIELDS))
        data["alpha"] = self.lora_alpha
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
