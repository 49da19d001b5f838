"""The `Subject`: what V-Warper knows about one personalised subject.

Holds the subject token and class word, the reference images, and (after coarse training) the
LoRA weights and the token embedding. It is an artifact: it runs nothing. Using it is
`vwarper.inject` / `vwarper.prepare`; what they compute from it (the reference branch's inversions)
is cached beside it (`vwarper.reference_cache(subject)`), not in it. (``Subject.prepare``, deprecated,
is attached by `vwarper_hooks.prepare`, so that this module imports nothing of the method.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import SubjectError, SubjectMismatchError
from ..images import ImageInput, check_image, load_images
from .activate import subject_fit_problems
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
    #: where the reference branch may keep inversions on disk (``Subject.load(..., cache_inversions=True)``
    #: sets ``<path>/inversions``); None: in memory only
    inversion_dir: Path | None = field(default=None, repr=False, compare=False)

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
        subject = read_subject(path, into=cls)
        if pipe is not None:
            problems = subject_fit_problems(pipe, subject, allow_config_mismatch)
            if problems:
                raise SubjectMismatchError("\n".join(problems))
        if cache_inversions:
            subject.inversion_dir = Path(path) / "inversions"
        return subject

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
