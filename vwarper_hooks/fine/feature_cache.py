"""Cached reference features: a warm call with ``cache_reference_features=True`` runs no reference forward.

The reference branch is conditioned on the subject prompt, not on the user's, so what it hands the
core (the match layer's features per match step, the warp layers' values per warp step, and their
keys for the baselines) is a pure function of subject, photo, size, timesteps and model, exactly like
the inversion trajectory. They are kept in that trajectory's `ReferenceState.features`, in the model
dtype, keyed by (matcher, step, layer, kind).

Placement: on the model's device while the state's features stay under
``WarpConfig.feature_cache_device_gib``; beyond that in CPU memory (pinned when CUDA is there), each
step's tensors copied to the device on a side stream one step ahead (prefetch), so the denoising
loop does not wait for the copy. CogVideoX-5B at 25 frames, 480x720: 10 warp layers x 17 steps of
V (58 MB each in bf16) plus 18 steps of match Q/K = about 12 GB, which is why the cache is opt-in.

Features stored by one run are checked for NaN and inf when the next run reads them (`_drop_nonfinite`,
one host read per device): a bad one is dropped with a warning and its reference forward runs again.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..files import nonfinite_names
from .capture import RunState
from .reference_cache import ReferenceState
from .warping import ReferenceFeatures

Key = tuple[str, int, int, str]

logger = logging.getLogger(__name__)


def _match_keys(run: RunState, step: int) -> list[Key]:
    return [(run.config.matcher, step, run.plan.match_layer, "match")] if step in run.plan.match_steps else []


def _warp_keys(run: RunState, step: int) -> list[Key]:
    if step not in run.plan.warp_steps:
        return []
    kinds = ("value", "key") if run.injector.needs_reference_keys else ("value",)
    return [(run.config.matcher, step, layer, kind) for layer in sorted(run.plan.warp_layers) for kind in kinds]


def _drop_nonfinite(states: dict[int, ReferenceState]) -> None:
    """Check the features a run stored since the last check (one host read per device, once per feature,
    never per step); drop those holding NaN or inf with a warning, so their reference forwards run again."""
    unchecked = [((photo, key), t) for photo, state in states.items() for key, t in state.features.items()
                 if key not in state.checked]
    if not unchecked:
        return
    bad = set(nonfinite_names(unchecked))
    for (photo, key), _ in unchecked:
        if (photo, key) in bad:
            del states[photo].features[key]
        else:
            states[photo].checked.add(key)
    if bad:
        logger.warning("discarding %d cached reference feature(s) holding NaN or inf (e.g. photo %d, %s); "
                       "their reference forwards run again", len(bad), *sorted(bad)[0])


class FeatureCache:
    """Stores a step's reference features after its forward; serves them instead of the next forward.

    One per reference branch: the features of each photo go to that photo's own `ReferenceState`
    (sample i of a batched forward is photo ``photos[i]``), so any later batch of photos finds them.
    """

    def __init__(self, states: dict[int, ReferenceState], device: torch.device, budget_gib: float) -> None:
        self.states, self.device = states, device
        _drop_nonfinite(states)
        self.budget = int(budget_gib * 2**30)
        self._on_device = sum(
            t.numel() * t.element_size() for state in states.values() for t in state.features.values()
            if t.device == device
        )
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._prefetched: dict[tuple[int, Key], torch.Tensor] = {}

    def complete(self, run: RunState, subject: int, photos: list[int], step: int) -> bool:
        """Whether every photo has every feature `step` needs (a matcher's only when they are tensors)."""
        keys = _match_keys(run, step) + _warp_keys(run, step)
        return bool(keys) and all(key in self.states[p].features for p in photos for key in keys)

    def store(self, run: RunState, subject: int, photos: list[int], step: int) -> None:
        """Keep what the reference forward of `step` captured, photo by photo (clones: the forward's
        buffers go away)."""
        mine = run.subjects[subject]
        for key in _match_keys(run, step):
            for photo, match in zip(photos, mine.ref_match, strict=True):
                if isinstance(match, tuple) and all(isinstance(t, torch.Tensor) for t in match):
                    self._keep(photo, key, torch.stack(match))  # (2, heads, N, d): the RoPE-free Q and K
        for key in _warp_keys(run, step):
            features = mine.ref_values.get(key[2])
            if features is None:  # a partial forward (choosing the best photo) captures no values
                continue
            tensor = features.value if key[3] == "value" else features.key
            for i, photo in enumerate(photos):
                self._keep(photo, key, tensor[i : i + 1])

    def _keep(self, photo: int, key: Key, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._on_device + size <= self.budget:
            self._on_device += size
            self.states[photo].features[key] = tensor.detach().clone()
        else:
            host = tensor.detach().to("cpu", copy=True)
            self.states[photo].features[key] = host.pin_memory() if torch.cuda.is_available() else host

    def load(self, run: RunState, subject: int, photos: list[int], step: int, next_step: int | None) -> None:
        """Put `step`'s cached features where the reference forward would have put them."""
        mine = run.subjects[subject]
        for key in _match_keys(run, step):
            mine.ref_match = [tuple(self._fetch(photo, key)) for photo in photos]
        for key in _warp_keys(run, step):
            features = mine.ref_values.setdefault(key[2], ReferenceFeatures(value=None))
            parts = [self._fetch(photo, key) for photo in photos]
            setattr(features, key[3], parts[0] if len(parts) == 1 else torch.cat(parts))  # "value" or "key"
        if next_step is not None:
            self._prefetch(photos, _match_keys(run, next_step) + _warp_keys(run, next_step))

    def _fetch(self, photo: int, key: Key) -> Any:
        tensor = self._prefetched.pop((photo, key), None)
        if tensor is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            tensor.record_stream(torch.cuda.current_stream(self.device))
            return tensor
        return self.states[photo].features[key].to(self.device, non_blocking=True)

    def _prefetch(self, photos: list[int], keys: list[Key]) -> None:
        if self._side is None:
            return
        with torch.cuda.stream(self._side):
            for photo in photos:
                for key in keys:
                    cached = self.states[photo].features.get(key)
                    if cached is not None and cached.device != self.device:
                        self._prefetched[(photo, key)] = cached.to(self.device, non_blocking=True)
