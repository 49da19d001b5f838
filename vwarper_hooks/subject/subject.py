"""The `Subject`: what V-Warper knows about one personalised subject.

Holds the subject token and class word, the reference images, and (after coarse training) the
LoRA weights and the token embedding. It also carries the in-memory cache of reference-branch
inversions, so a second generation with the same size and steps skips the inversion.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import WarpConfig
from ..errors import SubjectError, SubjectMismatchError
from ..fine.reference_cache import ReferenceCache
from ..guard import subject_fit_problems
from ..images import ImageInput, check_image, load_images
from ..inject import inject
from .lora import lora_spec
from .manifest import lora_scale_problem
from .store import read_subject, write_subject


@dataclass
class Subject:
    """A subject for `inject`. Build with `train_subject`, `Subject.load` or `Subject.from_images`."""

    token: str
    class_word: str
    images: list[Image.Image]
    lora: dict[str, torch.Tensor] | None = None  # diffusers-format keys, prefixed "transformer."
    lora_rank: int | None = None
    lora_alpha: float | None = None
    token_embedding: torch.Tensor | None = None  # (dim,) T5 input embedding of the new token
    info: dict[str, Any] = field(default_factory=dict)
    #: strength of the LoRA while injected (1: as trained); below 1 tempers the bleeding between the
    #: LoRAs of several subjects injected together (README, "Several subjects")
    lora_scale: float = 1.0
    reference_cache: ReferenceCache = field(default_factory=ReferenceCache, repr=False, compare=False)

    @classmethod
    def from_images(cls, images: Sequence[ImageInput], token: str, class_word: str) -> Subject:
        """A subject without coarse training (fine stage only): the token must tokenize as-is.

        `images` are PIL images, arrays, paths or a folder, read as `train_subject` reads them (`images.load_images`:
        EXIF orientation, 16-bit and palette images, transparency onto white).
        """
        subject = cls(token=token, class_word=class_word, images=load_images(images))
        subject.check()
        return subject

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write this subject as a directory (atomic; see `vwarper_hooks.subject.store`)."""
        return write_subject(self, path, overwrite=overwrite)

    @classmethod
    def load(
        cls, path: str | os.PathLike, pipe: Any = None, cache_inversions: bool = False, *,
        allow_config_mismatch: bool = False,
    ) -> Subject:
        """Read a subject directory, checking file hashes; with `pipe`, also that it fits that model.

        :param allow_config_mismatch: with `pipe`, only warn when the subject was trained for another
            transformer config (its LoRA and token must still fit the model's shapes); refused otherwise.
        :param cache_inversions: keep DDIM inversion trajectories on disk in ``<path>/inversions``
            (safetensors), so a later process generating at the same size and steps skips the inversion.
        """
        subject = cls(**read_subject(path))
        subject.check()
        if pipe is not None:
            problems = subject_fit_problems(pipe, subject, allow_config_mismatch)
            if problems:
                raise SubjectMismatchError("\n".join(problems))
        if cache_inversions:
            subject.reference_cache = ReferenceCache(Path(path) / "inversions")
        return subject

    def prepare(
        self,
        pipe: Any,
        *,
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
        config: WarpConfig | None = None,
        allow_config_mismatch: bool = False,
        **call_kwargs: Any,
    ) -> None:
        """Compute what a generation of this shape needs from the reference branch, now: the inversion
        (and, with ``config.cache_reference_features``, every step's reference features), cached on
        this subject (and on disk with ``Subject.load(..., cache_inversions=True)``). The first
        generation of that shape then costs what a warm call costs.

        :param call_kwargs: other pipeline arguments the generation will use and that condition the
            reference branch (e.g. ``guidance_scale`` for HunyuanVideo's guidance embedding).
        """
        call = dict(prompt=f"a photo of {self.prompt}", num_frames=num_frames, height=height, width=width,
                    num_inference_steps=num_inference_steps, output_type="latent", **call_kwargs)
        with inject(pipe, self, config or WarpConfig(), allow_config_mismatch=allow_config_mismatch) as session:
            session.prepare_call(**call)

    @property
    def prompt(self) -> str:
        """The subject prompt, "a <token> <class word>" (default inversion prompt)."""
        return f"a {self.token} {self.class_word}"

    @property
    def has_coarse(self) -> bool:
        return self.lora is not None or self.token_embedding is not None

    def check(self) -> None:
        """Raise `SubjectError` naming every problem with this subject's fields."""
        if not self.token or not self.token.strip():
            raise SubjectError("Expected a non-empty subject token such as '<clock>', but got an empty one.")
        if not (isinstance(self.lora_scale, int | float) and 0 <= self.lora_scale < float("inf")):
            raise SubjectError(f"Expected a finite lora_scale >= 0 for {self.token!r}, but got {self.lora_scale!r}.")
        if self.lora is not None:
            rank, alpha, _, _ = lora_spec(self)
            problem = lora_scale_problem(rank, alpha)
            if problem:
                raise SubjectError(f"{problem} for {self.token!r}. Do set lora_alpha near lora_rank (scale 1).")
        if not self.images:
            raise SubjectError("Expected at least one reference image, but got none. Pass 3-10 photos.")
        for i, image in enumerate(self.images):
            check_image(image, what=f"reference image #{i}")
