"""Stage 1 of V-Warper: coarse appearance adaptation (LoRA on K/V/O + a learnable subject token).

`train_subject` trains it and returns a `Subject`; `Subject.save` / `Subject.load` store it as a
directory (`artifact`); `activate_subject` puts it on a pipeline for a ``with`` block (used by
`vwarper.inject`).
"""

from __future__ import annotations

from .activate import SubjectMismatchError, activate_subject, config_hash, lora_layer_count, lora_targets
from .artifact import SubjectIntegrityError, load_subject, save_subject
from .config import CoarseConfig
from .token import SubjectEmbedding, subject_token
from .train import load_images, train_subject

__all__ = [
    "CoarseConfig",
    "SubjectEmbedding",
    "SubjectIntegrityError",
    "SubjectMismatchError",
    "activate_subject",
    "config_hash",
    "load_images",
    "load_subject",
    "lora_layer_count",
    "lora_targets",
    "save_subject",
    "subject_token",
    "train_subject",
]
