"""Files and fingerprints: the one atomic writer and the one implementation of each hash.

- `atomic_directory` / `atomic_file`: write into a temporary sibling, rename into place when the
  block succeeds, so a crash or an error leaves either the old content or nothing (and what a killed
  save left is removed by the next save or load, `remove_stale_temporaries`). Results follow the
  user's umask (mkstemp/mkdtemp and safetensors would make them private).
- `sha256_bytes` (file contents), `pixel_sha256` (an image's decoded pixels, size and mode),
  `config_hash` (a diffusers / transformers model config), `tensor_digest` (a tensor's values),
  `weights_digest` (a model's weights, LoRA included, sampled; recomputed only when they change).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as _load_safetensors

from .errors import SubjectIntegrityError, VwarperError

logger = logging.getLogger(__name__)


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


#: values read per weight tensor for its digest (evenly spaced, first and last included)
WEIGHT_SAMPLES = 64

#: model -> (cheap state signature, digest): the digest is recomputed only when the weights changed
_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()]


def _signature(model: torch.nn.Module) -> tuple | None:
    """Changes whenever a weight is replaced (another tensor object, even at a freed one's address) or
    written in place (torch's version counter), or an adapter is switched or rescaled; None where it
    cannot be read (inference tensors). Tensors are held by weak reference and compared by identity."""
    try:
        tensors = _tensors(model)
        weights = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    except RuntimeError:
        return None
    return tuple(weakref.ref(t) for t in tensors), weights, _adapter_state(model)


def _same_signature(a: tuple, b: tuple) -> bool:
    refs_a, *rest_a = a
    refs_b, *rest_b = b
    return rest_a == rest_b and len(refs_a) == len(refs_b) and all(
        x() is not None and x() is y() for x, y in zip(refs_a, refs_b, strict=True))


def _adapter_state(model: torch.nn.Module) -> tuple:
    """What peft's LoRA layers do with their weights: active adapters' scales, disabled or merged (adapter
    names left out: inject names its adapter anew each time)."""
    state = []
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and hasattr(module, "active_adapters"):
            active = [a for a in module.active_adapters if a in scaling]
            state.append(([float(scaling[a]) for a in active], bool(getattr(module, "disable_adapters", False)),
                          len(getattr(module, "merged_adapters", []))))
    return tuple(state)


def _sample(t: torch.Tensor) -> torch.Tensor:
    """`WEIGHT_SAMPLES` evenly spaced values of `t` as float64, on its device (integer index arithmetic: exact
    for any size, and no host read)."""
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    count = min(WEIGHT_SAMPLES, flat.numel())
    index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
    return flat[index].to(torch.float64)


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of a model's weights, LoRA included, cheap enough for a 5B model.

    Every parameter and buffer gives its shape, dtype and `WEIGHT_SAMPLES` evenly spaced values; peft's
    LoRA layers add their active scales and whether they are disabled or merged. Any training or
    fine-tuning (which moves nearly every value) changes it; an edit of a few values between the samples
    would not. One host read per device, and only when `_signature` says the weights changed since the
    last digest: about once per `inject` with a LoRA subject (its LoRA goes in anew), never per call.
    Meta tensors (no values) contribute their shapes only.
    """
    signature = _signature(model)
    cached = _digests.get(model)
    if signature is not None and cached is not None and _same_signature(cached[0], signature):
        return cached[1]
    shapes, samples = [], {}
    with torch.no_grad():
        for t in _tensors(model):
            shapes.append((tuple(t.shape), str(t.dtype)))
            if not t.is_meta and t.numel():
                try:
                    samples.setdefault(t.device, []).append(_sample(t))
                except (RuntimeError, TypeError, NotImplementedError):  # e.g. a quantized tensor subclass
                    shapes.append("unsampled")
    digest = hashlib.sha256(repr((shapes, _adapter_state(model))).encode())
    for device in sorted(samples, key=str):
        digest.update(torch.cat(samples[device]).cpu().numpy().tobytes())
    value = digest.hexdigest()[:16]
    if signature is not None:
        _digests[model] = (signature, value)
    return value


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity (one host read per device; meta tensors have no values)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in named:
        if not t.is_meta:
            by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for group in by_device.values():
        finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in group]).cpu().tolist()
        bad += [name for (name, _), ok in zip(group, finite, strict=True) if not ok]
    return bad


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


def _follow_umask(root: Path) -> None:
    """Give `root` and everything below it the modes a plain open() / mkdir() would (some writers, e.g.
    safetensors, create their files private)."""
    mask = _umask()
    root.chmod(0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe liveness probe: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Clean up after a killed `atomic_directory` or `atomic_file` of `target` (or a killed ``vwarper
    generate``'s staged outputs): its ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings whose writing process
    (named in the name, ``.NAME.tmp-PID-...``) no longer runs, or was not named.

    A stale ``.old-*`` is the previous content, moved aside just before the rename: it is put back when
    `target` is missing (the kill fell between the two renames), else removed. Returns the folders and
    files removed; one that cannot be removed is left.
    """
    removed = []
    for kind in ("old", "tmp"):
        for path in sorted(target.parent.glob(f".{target.name}.{kind}-*")):
            pid = path.name[len(f".{target.name}.{kind}-"):].split("-")[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                continue
            if kind == "old" and not target.exists():
                try:
                    os.replace(path, target)
                    logger.warning("restored %s from %s, left by a save that was killed", target, path.name)
                except OSError:  # e.g. a read-only folder: leave it for a save that can
                    pass
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            if not path.exists():
                removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) a killed write of %s left behind", len(removed), target)
    return removed


@contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory next to `target`; rename it to `target` when the block succeeds.

    An existing `target` is replaced only with `overwrite` (else `VwarperError`), and kept when the
    final rename fails. Everything written follows the umask. Temporaries a killed earlier save left
    (``.NAME.tmp-PID-*``) are removed first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        _follow_umask(tmp)
        if target.exists():
            if not overwrite:
                raise VwarperError(f"Expected no file or directory at {target}, but it exists. Pass overwrite=True.")
            old = target.with_name(f".{target.name}.old-{tag}")
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
    """Yield a temp file path next to `target`; rename it over `target` when the block succeeds (what a
    killed earlier write left, ``.NAME.tmp-PID-*``, is removed first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
