"""On-disk formats of stage 1: the Subject directory and resumable training checkpoints.

A subject directory holds::

    subject.json                        manifest (pydantic `SubjectManifest`), sha256 of every file
    pytorch_lora_weights.safetensors    diffusers-format LoRA ("transformer." keys, peft config
                                        in the "lora_adapter_metadata" header): loads with a stock
                                        ``pipe.load_lora_weights(path)``, alpha included
    token_embedding.safetensors         the subject token's text-encoder input embedding
    images/00.png ...                   the reference images

Everything is written into a temporary directory next to the target and renamed into place,
so a failed save leaves nothing behind. Loading checks the format version and every file's
hash before parsing, and only ever uses safetensors and JSON (nothing is unpickled).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from ..errors import SubjectError
from ..subject import Subject
from .activate import LORA_PREFIX, SubjectMismatchError, config_hash, fit_problems, lora_spec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "subject.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
TOKEN_FILE = "token_embedding.safetensors"
CHECKPOINT_POINTER = "latest.json"


class SubjectIntegrityError(SubjectError):
    """A subject directory or checkpoint is missing, malformed, truncated or tampered with."""


class LoraInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int
    alpha: float
    targets: list[str]


class SubjectManifest(BaseModel):
    """Contents of ``subject.json``."""

    model_config = ConfigDict(extra="forbid")
    format_version: int
    token: str
    class_word: str
    base_model: str | None = None
    transformer_class: str | None = None
    transformer_config_hash: str | None = None
    lora: LoraInfo | None = None
    token_embedding_dim: int | None = None
    training: dict[str, Any] = {}
    losses: list[float] = []
    images: list[str]
    image_sha256: list[str]  # of the decoded RGB pixels
    files: dict[str, str]  # relative path -> sha256 of the file bytes
    created_by: str = ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_sha256(image: Image.Image) -> str:
    """sha256 of an image's pixels, size and mode (independent of the file encoding)."""
    return sha256_bytes(repr((image.size, image.mode)).encode() + image.tobytes())


@contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory next to `target`; rename it to `target` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should follow the user's umask
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise SubjectError(f"Expected no file or directory at {target}, but it exists. Pass overwrite=True.")
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replaceable(target: Path) -> bool:
    """Only an earlier subject directory or an empty directory may be replaced by `save_subject`."""
    return target.is_dir() and ((target / MANIFEST).is_file() or not any(target.iterdir()))


def save_subject(subject: Subject, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `subject` as a directory at `path` (atomically); refuses an existing path unless `overwrite`."""
    subject.check()
    target = Path(path)
    if target.exists() and not overwrite:
        raise SubjectError(
            f"Expected a path that does not exist yet, but got {target}, which exists. "
            "Pass overwrite=True or choose another path."
        )
    if target.exists() and not _replaceable(target):
        raise SubjectError(
            f"Expected a subject directory (with {MANIFEST}) or an empty directory at {target} to overwrite, "
            "but got something else; it was left as it is. Choose another path."
        )
    from .. import __version__

    info = subject.info
    with atomic_directory(target, overwrite) as tmp:
        lora_info = None
        if subject.lora is not None:
            rank, alpha, targets, meta = lora_spec(subject)
            lora_info = LoraInfo(rank=rank, alpha=alpha, targets=targets)
            tensors = {k: v.detach().cpu().contiguous() for k, v in subject.lora.items()}
            header = {"format": "pt", "lora_adapter_metadata": json.dumps(meta, indent=2, sort_keys=True)}
            save_file(tensors, tmp / LORA_FILE, metadata=header)
        if subject.token_embedding is not None:
            header = {"format": "pt", "token": subject.token, "class_word": subject.class_word,
                      "space": "text encoder input token embedding"}
            embedding = subject.token_embedding.detach().cpu().contiguous()
            save_file({"token_embedding": embedding}, tmp / TOKEN_FILE, metadata=header)
        (tmp / "images").mkdir()
        names = []
        for i, image in enumerate(subject.images):
            names.append(f"images/{i:02d}.png")
            image.save(tmp / names[-1], format="PNG")
        files = {
            p.relative_to(tmp).as_posix(): sha256_bytes(p.read_bytes()) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = SubjectManifest(
            format_version=FORMAT_VERSION, token=subject.token, class_word=subject.class_word,
            base_model=info.get("base_model"), transformer_class=info.get("transformer_class"),
            transformer_config_hash=info.get("transformer_config_hash"), lora=lora_info,
            token_embedding_dim=None if subject.token_embedding is None else int(subject.token_embedding.numel()),
            training=info.get("training", {}), losses=info.get("losses", []), images=names,
            image_sha256=[pixel_sha256(im) for im in subject.images], files=files,
            created_by=f"vwarper_hooks {__version__}",
        )
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    logger.info("subject %r saved to %s", subject.token, target)
    return target


def _read_manifest(root: Path) -> SubjectManifest:
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
    if version != FORMAT_VERSION:
        raise SubjectIntegrityError(
            f"Expected subject format version {FORMAT_VERSION}, but got {version!r} in {file}. "
            "Use the vwarper_hooks version that wrote it, or re-save the subject."
        )
    try:
        return SubjectManifest.model_validate(raw)
    except ValidationError as exc:
        raise SubjectIntegrityError(f"Expected a valid {MANIFEST}, but got: {exc}. Re-save the subject.") from None


def _read_files(root: Path, manifest: SubjectManifest) -> dict[str, bytes]:
    """Every recorded file's bytes, after checking its sha256 against the manifest."""
    needed = set(manifest.images) | ({LORA_FILE} if manifest.lora else set())
    needed |= {TOKEN_FILE} if manifest.token_embedding_dim else set()
    unrecorded = sorted(needed - set(manifest.files))
    if unrecorded:
        raise SubjectIntegrityError(
            f"Expected {MANIFEST} to record a hash for every file, but got none for {unrecorded}. Re-save the subject."
        )
    blobs = {}
    for rel, digest in manifest.files.items():
        file = (root / rel).resolve()
        if root.resolve() not in file.parents or not file.is_file():
            raise SubjectIntegrityError(f"Expected file {rel} inside {root}, but it is missing. Restore or re-save.")
        data = file.read_bytes()
        if sha256_bytes(data) != digest:
            raise SubjectIntegrityError(
                f"Expected {rel} with sha256 {digest[:16]}... as recorded in {MANIFEST}, but got "
                f"{sha256_bytes(data)[:16]}... ({len(data)} bytes): the file was changed or truncated. "
                "Restore it or re-save the subject."
            )
        blobs[rel] = data
    return blobs


def _tensors(blob: bytes, rel: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise SubjectIntegrityError(f"Expected a readable safetensors file {rel}, but got: {exc}. Re-save.") from None


def load_subject(path: str | os.PathLike, pipe: Any = None) -> Subject:
    """Read a subject directory; with `pipe`, also check it was made for that pipeline's model."""
    root = Path(path)
    manifest = _read_manifest(root)
    blobs = _read_files(root, manifest)
    lora = None
    if manifest.lora is not None:
        lora = _tensors(blobs[LORA_FILE], LORA_FILE)
        rank, want = manifest.lora.rank, set()
        for name in manifest.lora.targets:
            want |= {f"{LORA_PREFIX}.{name}.lora_A.weight", f"{LORA_PREFIX}.{name}.lora_B.weight"}
        bad = sorted(k for k, v in lora.items() if v.ndim != 2 or v.shape[0 if ".lora_A." in k else 1] != rank)
        if set(lora) != want or bad:
            raise SubjectIntegrityError(
                f"Expected LoRA tensors for {len(manifest.lora.targets)} modules at rank {rank}, but got "
                f"{len(lora)} tensors (missing {sorted(want - set(lora))[:2]}, unexpected "
                f"{sorted(set(lora) - want)[:2]}, wrong rank {bad[:2]}). Re-save the subject."
            )
    embedding = None
    if manifest.token_embedding_dim:
        embedding = _tensors(blobs[TOKEN_FILE], TOKEN_FILE).get("token_embedding")
        if embedding is None or tuple(embedding.shape) != (manifest.token_embedding_dim,):
            raise SubjectIntegrityError(
                f"Expected a token_embedding of shape ({manifest.token_embedding_dim},) in {TOKEN_FILE}, but got "
                f"{None if embedding is None else tuple(embedding.shape)}. Re-save the subject."
            )
    images = []
    for rel, digest in zip(manifest.images, manifest.image_sha256, strict=True):
        image = Image.open(io.BytesIO(blobs[rel]))
        image.load()
        if image.mode != "RGB" or pixel_sha256(image) != digest:
            raise SubjectIntegrityError(f"Expected {rel} to hold the recorded RGB pixels, but they differ. Re-save.")
        images.append(image)
    info = {
        "base_model": manifest.base_model, "transformer_class": manifest.transformer_class,
        "transformer_config_hash": manifest.transformer_config_hash, "training": manifest.training,
        "losses": manifest.losses, "image_sha256": manifest.image_sha256,
        "lora_targets": manifest.lora.targets if manifest.lora else [],
    }
    subject = Subject(
        token=manifest.token, class_word=manifest.class_word, images=images, lora=lora,
        lora_rank=manifest.lora.rank if manifest.lora else None,
        lora_alpha=manifest.lora.alpha if manifest.lora else None, token_embedding=embedding, info=info,
    )
    subject.check()
    if pipe is not None:
        problems = []
        here = config_hash(pipe.transformer)
        if manifest.transformer_config_hash and manifest.transformer_config_hash != here:
            problems.append(
                f"Expected a subject trained for this {type(pipe.transformer).__name__} (config sha256 "
                f"{here[:12]}), but got one trained for config {manifest.transformer_config_hash[:12]} "
                f"({manifest.transformer_class}, base model {manifest.base_model}). Load that base model or retrain."
            )
        problems += fit_problems(pipe, subject)
        if problems:
            raise SubjectMismatchError("\n".join(problems))
    logger.info("subject %r loaded from %s", subject.token, root)
    return subject


def save_checkpoint(directory: Path, step: int, parts: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
    """Write ``step-XXXXXXXX/`` (one safetensors file per part + state.json) and point latest.json at it."""
    name = f"step-{step:08d}"
    with atomic_directory(directory / name, overwrite=True) as tmp:
        for part, tensors in parts.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / f"{part}.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    pointer = directory / CHECKPOINT_POINTER
    partial = pointer.with_name(f".{CHECKPOINT_POINTER}.{uuid.uuid4().hex[:8]}")
    partial.write_text(json.dumps({"step": step, "dir": name}))
    os.replace(partial, pointer)
    for old in directory.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return directory / name


def load_checkpoint(directory: Path, parts: tuple[str, ...]) -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
    """The latest checkpoint in `directory` as (parts, state), or None when there is none."""
    pointer = directory / CHECKPOINT_POINTER
    if not pointer.is_file():
        return None
    try:
        where = directory / json.loads(pointer.read_text())["dir"]
        state = json.loads((where / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise TypeError(f"state.json holds no integer 'step' ({type(state).__name__})")
        blobs = {part: (where / f"{part}.safetensors").read_bytes() for part in parts}
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise SubjectIntegrityError(
            f"Expected a readable checkpoint in {directory}, but got: {exc}. Delete the directory or resume=False."
        ) from None
    loaded = {part: _tensors(blob, f"{where.name}/{part}") for part, blob in blobs.items()}
    return loaded, state


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a checkpoint pointer (a run `resume=True` would continue)."""
    return (Path(directory) / CHECKPOINT_POINTER).is_file()
