"""The subject directory on disk: `write_subject` and `read_subject`, both of one type (`StoredSubject`,
which `Subject` is; the store never imports the class that uses it).

A subject directory holds::

    subject.json                        manifest (pydantic `manifest.SubjectManifest`), sha256 of every
                                        file; its own fields are checked against the files (`manifest`)
    pytorch_lora_weights.safetensors    diffusers-format LoRA ("transformer." keys, peft config
                                        in the "lora_adapter_metadata" header): loads with a stock
                                        ``pipe.load_lora_weights(path)``, alpha included
    token_embedding.safetensors         the subject token's text-encoder input embedding
    images/00.png ...                   the reference images, shrunk to the smallest size that covers
                                        the training size (what training and generation at that size see)

Everything is written into a temporary directory next to the target and renamed into place,
so a failed save leaves nothing behind. Loading checks the format version and every file's
hash before parsing, and only ever uses safetensors and JSON (nothing is unpickled).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from PIL import Image
from safetensors.torch import save_file

from ..errors import SubjectError, SubjectIntegrityError
from ..files import (
    atomic_directory,
    nonfinite_names,
    pixel_sha256,
    read_safetensors,
    remove_stale_temporaries,
    sha256_bytes,
)
from ..images import DECODE_ERRORS, downscale_to_cover
from .lora import LORA_PREFIX, lora_spec
from .manifest import (
    FORMAT_VERSION,
    LORA_FILE,
    MANIFEST,
    TOKEN_FILE,
    LoraInfo,
    SubjectManifest,
    read_manifest,
    weight_file_problems,
)

logger = logging.getLogger(__name__)


class StoredSubject(Protocol):
    """What a subject directory holds (the `Subject` dataclass has these fields)."""

    token: str
    class_word: str
    images: list[Image.Image]
    lora: dict[str, Any] | None  # diffusers-format keys, prefixed "transformer."
    lora_rank: int | None
    lora_alpha: float | None
    token_embedding: Any  # (dim,) tensor or None
    info: dict[str, Any]

    def check(self) -> None:
        """Raise naming every problem with the fields."""


S = TypeVar("S", bound=StoredSubject)

def _replaceable(target: Path) -> bool:
    """Only an earlier subject directory or an empty directory may be replaced by `save_subject`."""
    return target.is_dir() and ((target / MANIFEST).is_file() or not any(target.iterdir()))


def stored_images(subject: StoredSubject) -> list[Image.Image]:
    """The subject's photos as written: no larger than needed to cover the training size.

    Training and a generation at that size resize and crop them to the very same pixels as the
    originals; a full-resolution copy would only make the directory large. Subjects without a
    training size (fine stage only) keep their images as they are.
    """
    training = subject.info.get("training") or {}
    height, width = training.get("height"), training.get("width")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        return list(subject.images)
    images = [downscale_to_cover(image, height, width) for image in subject.images]
    shrunk = sum(a is not b for a, b in zip(images, subject.images, strict=True))
    if shrunk:
        logger.info("%d reference image(s) stored downscaled to cover the training size %dx%d", shrunk, height, width)
    return images


def write_subject(subject: StoredSubject, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `subject` as a directory at `path` (atomically); refuses an existing path unless `overwrite`."""
    subject.check()
    bad = nonfinite_problems(vars(subject))
    if bad:
        raise SubjectError(
            f"Expected a subject with finite weights and losses to save, but got {' and '.join(bad)}: its "
            "training diverged, and nothing was written. Do train it again with lower learning rates."
        )
    target = Path(path)
    remove_stale_temporaries(target)  # a killed earlier save's leftovers (it may also put target back)
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
    info = subject.info
    images = stored_images(subject)
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
        for i, image in enumerate(images):
            names.append(f"images/{i:02d}.png")
            image.save(tmp / names[-1], format="PNG")
        files = {
            p.relative_to(tmp).as_posix(): sha256_bytes(p.read_bytes()) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = SubjectManifest(
            format_version=FORMAT_VERSION, token=subject.token, class_word=subject.class_word,
            base_model=info.get("base_model"), transformer_class=info.get("transformer_class"),
            transformer_config_hash=info.get("transformer_config_hash"),
            transformer_config=info.get("transformer_config"), lora=lora_info,
            token_embedding_dim=None if subject.token_embedding is None else int(subject.token_embedding.numel()),
            training=info.get("training", {}), losses=info.get("losses", []), images=names,
            image_sha256=[pixel_sha256(im) for im in images], files=files,
            created_by=f"vwarper_hooks {_version()}",
        )
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    logger.info("subject %r saved to %s", subject.token, target)
    return target


def nonfinite_problems(subject_fields: dict[str, Any]) -> list[str]:
    """The LoRA / token tensors and training losses of a subject that hold NaN or inf (empty: all finite)."""
    tensors = dict((subject_fields.get("lora") or {}).items())
    if subject_fields.get("token_embedding") is not None:
        tensors["token_embedding"] = subject_fields["token_embedding"]
    bad = nonfinite_names(tensors.items())
    losses = (subject_fields.get("info") or {}).get("losses") or []
    problems = [f"{len(bad)} tensor(s) with NaN or inf (e.g. {bad[0]})"] if bad else []
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in losses):
        problems.append("non-finite training losses")
    return problems


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


def _read_lora(manifest: SubjectManifest, blobs: dict[str, bytes]) -> dict[str, Any] | None:
    """The LoRA tensors, checked against the manifest's targets and rank (None: the subject has none)."""
    if manifest.lora is None:
        return None
    lora = read_safetensors(blobs[LORA_FILE], LORA_FILE)
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
    return lora


def read_subject(path: str | os.PathLike, into: Callable[..., S]) -> S:
    """The subject stored in a directory, built by ``into(**fields)`` (e.g. ``Subject``) and checked, after
    checking every file's hash (and after removing what a killed save of it left beside it)."""
    root = Path(path)
    remove_stale_temporaries(root)
    manifest = read_manifest(root)
    blobs = _read_files(root, manifest)
    lora = _read_lora(manifest, blobs)
    embedding = None
    if manifest.token_embedding_dim:
        embedding = read_safetensors(blobs[TOKEN_FILE], TOKEN_FILE).get("token_embedding")
        if embedding is None or tuple(embedding.shape) != (manifest.token_embedding_dim,):
            raise SubjectIntegrityError(
                f"Expected a token_embedding of shape ({manifest.token_embedding_dim},) in {TOKEN_FILE}, but got "
                f"{None if embedding is None else tuple(embedding.shape)}. Re-save the subject."
            )
    problems = weight_file_problems(manifest, blobs)  # the manifest's own fields, covered by no hash
    if problems:
        raise SubjectIntegrityError(" ".join(problems))
    images = []
    for rel, digest in zip(manifest.images, manifest.image_sha256, strict=True):
        try:
            image = Image.open(io.BytesIO(blobs[rel]))
            image.load()
        except DECODE_ERRORS as exc:
            raise SubjectIntegrityError(f"Expected a readable PNG at {rel}, but got: {exc}. Re-save it.") from None
        if image.mode != "RGB" or pixel_sha256(image) != digest:
            raise SubjectIntegrityError(f"Expected {rel} to hold the recorded RGB pixels, but they differ. Re-save.")
        images.append(image)
    info = {
        "base_model": manifest.base_model, "transformer_class": manifest.transformer_class,
        "transformer_config_hash": manifest.transformer_config_hash,
        "transformer_config": manifest.transformer_config, "training": manifest.training,
        "losses": manifest.losses, "image_sha256": manifest.image_sha256,
        "lora_targets": manifest.lora.targets if manifest.lora else [],
    }
    fields = dict(
        token=manifest.token, class_word=manifest.class_word, images=images, lora=lora,
        lora_rank=manifest.lora.rank if manifest.lora else None,
        lora_alpha=manifest.lora.alpha if manifest.lora else None, token_embedding=embedding, info=info,
    )
    bad = nonfinite_problems(fields)
    if bad:
        raise SubjectIntegrityError(
            f"Expected finite weights in the subject at {root}, but got {' and '.join(bad)}: its training "
            "diverged. Do train it again with lower learning rates."
        )
    subject = into(**fields)
    subject.check()
    logger.info("subject %r read from %s", manifest.token, root)
    return subject


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vwarper-hooks")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
