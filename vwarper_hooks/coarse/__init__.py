"""Stage 1 of V-Warper: coarse appearance adaptation (LoRA on K/V/O + a learnable subject token).

`train_subject` trains it and returns a `Subject` (see `vwarper_hooks.subject` for the artifact
and its activation); `checkpoint` makes long runs resumable.
"""

from __future__ import annotations

from .config import CoarseConfig
from .train import train_subject

__all__ = ["CoarseConfig", "train_subject"]
