"""``subject.json``: its schema (`SubjectManifest`), `read_manifest`, and the checks of its own fields.

The manifest records a sha256 of every file, but its own fields (the LoRA's rank, alpha and targets, the
token, the token embedding's width) are covered by no hash. So each is checked against the weight file it
describes (`weight_file_problems`): the LoRA tensors' widths and keys, and the headers written next to the
weights (peft's ``lora_adapter_metadata``, the token file's ``token`` and ``class_word``). A hand edit of
one of them is refused at load instead of changing the video silently. Alpha must also give a LoRA scale
(alpha / rank) within `LORA_SCALE_RANGE` (`lora_scale_problem`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

from ..config import validation_problems
from ..errors import SubjectIntegrityError

#: what `save` writes; 2 added `transformer_config` (so that releases reading only 1 say "format version"
#: rather than "invalid subject.json" on a newer subject)
FORMAT_VERSION = 2
#: what `load` reads: version 1 is version 2 without `transformer_config` (its config named by hash only)
READABLE_VERSIONS = (1, 2)
MANIFEST = "subject.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
TOKEN_FILE = "token_embedding.safetensors"
#: the LoRA scales (alpha / rank) a subject may have: far below, its LoRA does nothing; far above, its
#: weights are multiplied into noise or past the largest float (alpha 1e300 gives a video of NaN)
LORA_SCALE_RANGE = (1e-4, 1e4)


def lora_scale_problem(rank: int, alpha: float) -> str | None:
    """Why `alpha` at `rank` is no sane LoRA scale ("Expected ..., but got ...", no advice); None: it is."""
    low, high = LORA_SCALE_RANGE
    scale = alpha / rank if rank > 0 else math.inf
    if math.isfinite(scale) and low <= scale <= high:
        return None
    return (f"Expected a LoRA alpha between {low * rank:g} and {high * rank:g} at rank {rank} (a scale alpha / rank "
            f"within {low:g}-{high:g}), but got alpha {alpha:g} (scale {scale:g})")


class LoraInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    targets: list[str]

    @model_validator(mode="after")
    def _sane_scale(self) -> LoraInfo:
        problem = lora_scale_problem(self.rank, self.alpha)
        if problem:
            raise ValueError(f"{problem}. Do restore subject.json or re-save the subject.")
        return self


class SubjectManifest(BaseModel):
    """Contents of ``subject.json``."""

    model_config = ConfigDict(extra="forbid")
    format_version: int
    token: str
    class_word: str
    base_model: str | None = None
    transformer_class: str | None = None
    transformer_config_hash: str | None = None
    transformer_config: dict[str, Any] | None = None  # the config itself (files.model_config); older: hash only
    lora: LoraInfo | None = None
    token_embedding_dim: int | None = Field(None, ge=1)
    training: dict[str, Any] = {}
    losses: list[FiniteFloat] = []
    images: list[str]
    image_sha256: list[str]  # of the decoded RGB pixels
    files: dict[str, str]  # relative path -> sha256 of the file bytes
    created_by: str = ""

    @model_validator(mode="after")
    def _one_hash_per_image(self) -> SubjectManifest:
        if len(self.images) != len(self.image_sha256):
            raise ValueError(
                f"Expected one image_sha256 per image, but got {len(self.images)} images and "
                f"{len(self.image_sha256)} hashes. Do restore subject.json or re-save the subject."
            )
        return self


def read_manifest(root: Path) -> SubjectManifest:
    """The validated ``subject.json`` of the subject directory `root` (`SubjectIntegrityError` if not)."""
    file = root / MANIFEST
    if not file.is_file():
        raise SubjectIntegrityError(
            f"Expected a subject directory containing {MANIFEST}, but got {root}, which has none. "
            "Pass the directory written by Subject.save()."
        )
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SubjectIntegrityError(f"Expected valid JSON in {file}, but got: {exc}. Re-save the subject.") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS or (version == 1 and "transformer_config" in raw):
        raise SubjectIntegrityError(
            f"Expected subject format version {' or '.join(map(str, READABLE_VERSIONS))}, but got {version!r} "
            f"in {file}. "
            "Use the vwarper_hooks version that wrote it, or re-save the subject."
        )
    try:
        return SubjectManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, MANIFEST))
        raise SubjectIntegrityError(
            f"Expected a valid {file}, but it has problems: {problems} Re-save or retrain the subject."
        ) from None


def header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (its JSON header; nothing else is parsed)."""
    try:
        size = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, AttributeError):  # read_safetensors has refused an unreadable file already
        return {}
    return meta if isinstance(meta, dict) else {}


def _lora_header_problems(manifest: SubjectManifest, blob: bytes) -> list[str]:
    raw = header_metadata(blob).get("lora_adapter_metadata")
    if raw is None or manifest.lora is None:  # written without peft's metadata: the tensors are checked alone
        return []
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return [f"Expected peft's lora_adapter_metadata as JSON in {LORA_FILE}, but it is not. Re-save the subject."]
    lora, prefix = manifest.lora, "transformer."
    recorded = {"rank": (lora.rank, meta.get(f"{prefix}r")), "alpha": (lora.alpha, meta.get(f"{prefix}lora_alpha")),
                "targets": (lora.targets, meta.get(f"{prefix}target_modules"))}
    return [f"Expected lora.{name} in {MANIFEST} to be what {LORA_FILE} was written with ({theirs!r}), but got "
            f"{ours!r}: {MANIFEST} was edited by hand. Do restore it or re-save the subject."
            for name, (ours, theirs) in recorded.items() if theirs is not None and ours != theirs]


def _token_header_problems(manifest: SubjectManifest, blob: bytes) -> list[str]:
    meta = header_metadata(blob)
    recorded = {"token": manifest.token, "class_word": manifest.class_word}
    return [f"Expected {name} in {MANIFEST} to be the one {TOKEN_FILE} was trained for ({meta[name]!r}), but got "
            f"{ours!r}: {MANIFEST} was edited by hand. Do restore it or re-save the subject."
            for name, ours in recorded.items() if name in meta and meta[name] != ours]


def weight_file_problems(manifest: SubjectManifest, blobs: dict[str, bytes]) -> list[str]:
    """Every manifest field that disagrees with the weight file it describes (empty: all agree)."""
    problems = []
    for name, field, value in ((LORA_FILE, "lora", manifest.lora), (TOKEN_FILE, "token_embedding_dim",
                                                                      manifest.token_embedding_dim)):
        if name in blobs and value is None:
            problems.append(f"Expected {field} in {MANIFEST} for the recorded {name}, but got none: the file "
                            "would be ignored. Do restore subject.json or re-save the subject.")
    if LORA_FILE in blobs:
        problems += _lora_header_problems(manifest, blobs[LORA_FILE])
    if TOKEN_FILE in blobs:
        problems += _token_header_problems(manifest, blobs[TOKEN_FILE])
    return problems
