"""Files and fingerprints: the one atomic writer and the one implementation of each hash.

- `atomic_directory` / `atomic_file`: write into a temporary sibling, rename into place when the
  block succeeds, so a crash or an error leaves either the old content or nothing. Results follow
  the user's umask (mkstemp/mkdtemp would make them private).
- `sha256_bytes` (file contents), `pixel_sha256` (an image's decoded pixels, size and mode),
  `config_hash` (a diffusers / transformers model config), `tensor_digest` (a tensor's values).
"""

from __future__ import annotations

import hashlib
import json
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
from safetensors import SafetensorError
from safetensors.torch import load as _load_safetensors

from .errors import SubjectIntegrityError, VwarperError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_sha256(image: Image.Image) -> str:
    """sha256 of an image's pixels, size and mode (independent of the file encoding)."""
    return sha256_bytes(repr((image.size, image.mode)).encode() + image.tobytes())


def model_config(model: Any) -> dict[str, Any]:
    """A diffusers or transformers model config as plain JSON values (tuples as lists), private ``_`` keys
    and library versions left out: what `config_hash` hashes and ``subject.json`` records."""
    raw = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    config = {k: v for k, v in raw.items() if not k.startswith("_") and k != "transformers_version"}
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_hash(model: Any) -> str:
    """sha256 of a diffusers or transformers model config (`model_config`) as sorted JSON."""
    return sha256_bytes(json.dumps(model_config(model), sort_keys=True, default=str).encode())


def tensor_digest(x: torch.Tensor) -> str:
    """Short sha256 of a tensor's values (one host copy: used once per run, for cache keys)."""
    data = x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return sha256_bytes(data)[:16]


def read_safetensors(blob: bytes, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file's bytes (never a pickle); `SubjectIntegrityError` if unreadable."""
    try:
        return _load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise SubjectIntegrityError(f"Expected a readable safetensors file {what}, but got: {exc}. Re-save.") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory next to `target`; rename it to `target` when the block succeeds.

    An existing `target` is replaced only with `overwrite` (else `VwarperError`), and kept when the
    final rename fails.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise VwarperError(f"Expected no file or directory at {target}, but it exists. Pass overwrite=True.")
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


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temp file path next to `target`; rename it over `target` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
