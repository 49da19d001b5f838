"""The subject artifact and its activation, used by both stages.

`Subject` (what V-Warper knows about one subject), `store` (its directory on disk), `lora` and
`token` (its coarse stage: LoRA on K/V/O and the learned token embedding) and `activate` (putting
that coarse stage on a pipeline for a ``with`` block and taking it off again).
"""

from __future__ import annotations

from .subject import Subject

__all__ = ["Subject"]
