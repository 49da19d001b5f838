"""`prepare(pipe, subject, ...)`: compute ahead what a generation of one shape needs from the reference
branch, so that the first generation of that shape costs what a warm one costs.

It runs the pipeline under `inject` for one denoising step: at that step's first transformer call the
reference branch inverts each subject's photos (and, with ``WarpConfig(cache_reference_features=True)``,
runs every step's reference features); the step itself runs stock, and the pipeline's own interrupt
flag (``pipe._interrupt``, checked by diffusers' pipelines before each step) skips the rest. The results
land in each subject's cache (`vwarper.reference_cache(subject)`: in memory, and on disk for
``Subject.load(..., cache_inversions=True)``). The one extra denoising step costs 1/num_inference_steps
of a generation.
"""

from __future__ import annotations

import warnings
from typing import Any

from .config import WarpConfig
from .inject import inject
from .subject.subject import Subject

__all__ = ["prepare"]


def prepare(
    pipe: Any,
    subject: Any,
    *,
    num_frames: int,
    height: int,
    width: int,
    num_inference_steps: int,
    config: WarpConfig | None = None,
    allow_config_mismatch: bool = False,
    **call_kwargs: Any,
) -> None:
    """Invert `subject`'s reference photos (a `Subject` or a list of them) for generations of this shape.

    :param call_kwargs: other pipeline arguments the generation will use and that condition the
        reference branch (e.g. ``guidance_scale`` for HunyuanVideo's guidance embedding).
    """
    subjects = list(subject) if isinstance(subject, list | tuple) else [subject]
    prompt = "a photo of " + " and ".join(s.prompt for s in subjects)  # every token: the masks need them
    call = dict(prompt=prompt, num_frames=num_frames, height=height, width=width,
                num_inference_steps=num_inference_steps, output_type="latent", **call_kwargs)
    with inject(pipe, subject, config or WarpConfig(), allow_config_mismatch=allow_config_mismatch) as session:
        session.prepare_call(**call)


def _deprecated_subject_prepare(self: Subject, pipe: Any, **kwargs: Any) -> None:
    """Deprecated since 0.3 (goes away in 0.4): ``vwarper.prepare(pipe, subject, ...)``, same arguments."""
    warnings.warn("Subject.prepare(pipe, ...) is deprecated: call vwarper.prepare(pipe, subject, ...) "
                  "(same arguments).", DeprecationWarning, stacklevel=2)
    prepare(pipe, self, **kwargs)


# Attached here, not written in the class: the artifact's module imports nothing of the method.
Subject.prepare = _deprecated_subject_prepare  # type: ignore[attr-defined]
