"""Cache of reference-branch states (text conditioning, clean latent, inversion trajectory).

In memory by default. Opt-in on disk (`ReferenceCache(directory=...)`, e.g. inside a subject's
directory): one safetensors file per key, with the key stored in the file's metadata and checked
on load, as is every value (a file holding NaN or inf is discarded with a warning and recomputed). Any
failure to write it (a full disk, a read-only folder) is a warning: the generation goes on.
The key names the model by class, config hash, `_name_or_path` and a digest of its weights, LoRA
included (`weights_digest`: sampled values, recomputed only when the weights change), so two models
of one config never share a trajectory.

Each subject's cache lives here, beside the subject and not in it (`reference_cache(subject)`): the
`Subject` is the artifact, the method keeps what it computed from it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import atomic_file, config_hash, nonfinite_names, pixel_sha256, weights_digest

logger = logging.getLogger(__name__)


def model_fingerprint(model: torch.nn.Module) -> str:
    """Class, config hash, source and a digest of the weights (`weights_digest`) of a diffusers model:
    two models of one config, or one model with another LoRA, never share an inversion."""
    source = dict(getattr(model, "config", {})).get("_name_or_path", "")
    return f"{type(model).__name__}:{config_hash(model)[:16]}:{source}:{weights_digest(model)}"


@dataclass
class ReferenceState:
    """Everything the reference branch needs for one generation setting."""

    text: dict[str, torch.Tensor]  # text conditioning as forward kwargs (batch 1)
    clean: torch.Tensor  # (1, *latent) VAE latent of the repeated image
    trajectory: torch.Tensor  # (steps - first, 1, *latent): the latents of steps first..steps-1
    first: int = 0  # the noisiest step inverted (no step before it is ever read)
    #: reference-branch features per (matcher, step, layer, kind), with cache_reference_features
    features: dict[tuple[str, int, int, str], torch.Tensor] = field(default_factory=dict)
    #: keys of `features` already checked to be finite (`feature_cache`: each is checked once)
    checked: set[tuple[str, int, int, str]] = field(default_factory=set)

    def latents_at(self, step: int) -> torch.Tensor:
        if step < self.first:
            raise IndexError(f"Expected a step >= {self.first} (the noisiest step inverted), but got {step}.")
        return self.trajectory[step - self.first]


class ReferenceCache:
    """Cache of `ReferenceState`, keyed by what the state depends on (see `cache_key`).

    The last element of a key is the model's `id()`: memory-only; the disk key leaves it out.
    In memory it keeps the `max_entries` most recently used states (each is a whole inversion
    trajectory on the model's device: ~110 MB at CogVideoX-5B's 25 x 480 x 720 in bf16).
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_entries: int = 4) -> None:
        if max_entries < 1:
            raise ValueError(f"Expected max_entries >= 1, but got {max_entries}.")
        self.max_entries = max_entries
        self._states: dict[tuple, ReferenceState] = {}
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    def get_or_make(self, key: tuple, make: Callable[[], ReferenceState], first: int = 0) -> ReferenceState:
        """The state of `key` whose trajectory reaches step `first`: cached, else ``make()`` (and cached)."""
        state = self._states.get(key)
        if state is not None and state.first <= first:
            self.hits += 1
            self._states[key] = self._states.pop(key)  # most recently used last
            return state
        state = self._load(key)
        if state is not None and state.first > first:
            state = None  # inverted for a later window: not noisy enough for this one
        if state is not None:
            self.disk_hits += 1
        else:
            self.misses += 1
            state = make()
            try:
                self._save(key, state)
            except Exception as exc:  # noqa: BLE001 - a full disk, a read-only folder, a serialiser error:
                # a cache is an optimisation, never fail the generation over it
                logger.warning("could not write the inversion cache to %s (%s); kept in memory only",
                               self.directory, exc)
        self._states.pop(key, None)
        self._states[key] = state
        while len(self._states) > self.max_entries:
            self._states.pop(next(iter(self._states)))  # least recently used first
        return state

    def _path(self, key: tuple) -> tuple[Path, str] | None:
        if self.directory is None:
            return None
        text = repr(key[:-1])
        return self.directory / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.safetensors", text

    def _load(self, key: tuple) -> ReferenceState | None:
        where = self._path(key)
        if where is None or not where[0].is_file():
            return None
        path, text = where
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != text:
                    return None
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # a damaged cache file is recomputed, never trusted
            logger.warning("ignoring unreadable inversion cache %s (%s)", path, exc)
            return None
        bad = nonfinite_names(tensors.items())  # one host read for the whole file, before any step runs
        if bad:
            logger.warning("discarding inversion cache %s: %d tensor(s) hold NaN or inf (e.g. %s); recomputing it",
                           path, len(bad), bad[0])
            return None
        device = key_device(key)
        text_kwargs = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("text.")}
        first = int(meta.get("first", 0))
        return ReferenceState(text_kwargs, tensors["clean"].to(device), tensors["trajectory"].to(device), first)

    def _save(self, key: tuple, state: ReferenceState) -> None:
        where = self._path(key)
        if where is None:
            return
        path, text = where
        tensors = {f"text.{k}": v.detach().cpu().contiguous() for k, v in state.text.items()}
        tensors.update(
            clean=state.clean.detach().cpu().contiguous(), trajectory=state.trajectory.detach().cpu().contiguous()
        )
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": text, "first": str(state.first)})
        logger.info("inversion cached on disk: %s", path)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


def cache_key(
    image: Image.Image,
    prompt: str,
    timesteps: torch.Tensor,  # on the CPU
    call_kwargs: dict,
    model: torch.nn.Module,
    extra: tuple = (),
) -> tuple:
    """What a reference state depends on: image, prompt, timesteps, the generation call's tensor
    shapes (latent size, text length), dtypes and devices, the model object, and `extra` (e.g. the
    values of conditioning inputs such as a guidance embedding, and the attention kwargs)."""
    shapes = tuple(
        sorted(
            (k, tuple(v.shape[1:]), str(v.dtype), str(v.device)) for k, v in call_kwargs.items() if torch.is_tensor(v)
        )
    )
    steps = tuple(timesteps.tolist())  # host timesteps (the step clock's copy): no device read
    return (pixel_sha256(image)[:16], prompt, steps, shapes, *extra, model_fingerprint(model), id(model))


def key_device(key: tuple) -> str:
    """The device of the generation latents recorded in a cache key."""
    for _, _, _, device in key[3]:
        return device
    return "cpu"


#: id(subject) -> (a weak reference to it, its cache); an entry goes when its subject is collected
_caches: dict[int, tuple[weakref.ref, ReferenceCache]] = {}


def reference_cache(subject: Any) -> ReferenceCache:
    """The reference-branch cache of `subject`, made on first use: in memory, and also on disk in
    ``subject.inversion_dir`` when that is set (``Subject.load(path, cache_inversions=True)``). One per
    subject object for as long as it lives; a new `inversion_dir` starts a new cache."""
    key = id(subject)
    entry = _caches.get(key)
    directory = getattr(subject, "inversion_dir", None)
    wanted = Path(directory) if directory is not None else None
    if entry is not None and entry[0]() is subject and entry[1].directory == wanted:
        return entry[1]
    cache = ReferenceCache(wanted)
    _caches[key] = (weakref.ref(subject, lambda _gone: _caches.pop(key, None)), cache)
    return cache
