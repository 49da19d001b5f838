"""Stage 1 of V-Warper: coarse appearance adaptation (LoRA on K/V/O + a learnable subject token).

`train_subject` (`train`) validates a run and returns a `Subject` (see `vwarper_hooks.subject` for
the artifact and its activation); `loop` optimises, `objective` turns the scheduler into a training
objective (DDPM epsilon / v, flow matching), `checkpoint` makes long runs resumable. No model family
is named here: what differs between families comes from their adapters.
"""

from __future__ import annotations

from .config import CoarseConfig
from .train import train_subject

__all__ = ["CoarseConfig", "train_subject"]
