"""Which denoising step a transformer call belongs to, and what V-Warper does at each step.

Step indices are 0-based positions in ``pipe.scheduler.timesteps``. A transformer call whose
timestep is not in that list (an inversion pass, a call outside the pipeline) has no step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..config import WarpConfig

logger = logging.getLogger(__name__)


def step_index(
    timestep: torch.Tensor | float | int, timesteps: torch.Tensor | None, hint: int | None = None
) -> int | None:
    """Position of `timestep` (first element if batched) in `timesteps`, or None if absent.

    :param hint: the scheduler's own step counter, if it keeps one: breaks ties when a low-precision
        timestep matches several entries (two close timesteps can round to the same bf16 value).
    """
    if timesteps is None or len(timesteps) == 0:
        return None
    t = timestep.reshape(-1)[0] if isinstance(timestep, torch.Tensor) else torch.tensor(timestep)
    hits = (timesteps.to(t.device).to(torch.float64) == t.to(torch.float64)).nonzero()
    if not len(hits) and t.is_floating_point() and torch.finfo(t.dtype).bits < 32:
        # HunyuanVideo casts the timestep to the latent dtype (bf16 / fp16): compare at that precision.
        hits = (timesteps.to(t.device).to(t.dtype) == t).nonzero()
        if hint is not None and len(hits) > 1 and bool((hits[:, 0] == hint).any()):
            return hint
    return int(hits[0, 0]) if len(hits) else None


def _span(bounds: tuple[int, int] | None) -> frozenset[int]:
    return frozenset() if bounds is None else frozenset(range(bounds[0], bounds[1] + 1))


@dataclass(frozen=True)
class StepPlan:
    """Layers each branch needs at each step, derived once from a `WarpConfig` and the step count.

    Matching at step t uses match-layer Q/K of step t-1 (paper 4.3), so warping starts at step 1
    at the earliest; the foreground score is accumulated from step 0 up to t-1.
    """

    warp_steps: frozenset[int]
    match_steps: frozenset[int]  # steps whose match-layer features are captured (t-1 for warp t)
    fg_steps: frozenset[int]
    match_layer: int
    warp_layers: frozenset[int]
    fg_layers: frozenset[int]
    _gen: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)
    _ref: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, config: WarpConfig, num_steps: int, depth: int) -> StepPlan:
        if not config.warp:
            empty: frozenset[int] = frozenset()
            return cls(empty, empty, empty, config.match_layer, empty, empty)
        wanted = _span(config.warp_steps)
        warp = frozenset(s for s in wanted if 1 <= s < num_steps)
        if warp != wanted:
            dropped = sorted(wanted - warp)
            logger.warning(
                "warp steps %s dropped: a %d-step run has steps 0-%d, and step 0 has no previous step to "
                "match from", dropped, num_steps, num_steps - 1,
            )
        match = frozenset(s - 1 for s in warp)
        fg = frozenset(range(0, max(warp))) if (warp and config.mask) else frozenset()
        fg_layers = _span(config.fg_layers) if config.fg_layers is not None else frozenset(range(depth))
        plan = cls(warp, match, fg, config.match_layer, _span(config.warp_layers), fg_layers)
        for step in range(num_steps):
            plan._gen[step] = plan._layers(step, generation=True)
            plan._ref[step] = plan._layers(step, generation=False)
        return plan

    def _layers(self, step: int, generation: bool) -> frozenset[int]:
        layers: set[int] = set()
        if step in self.match_steps:
            layers.add(self.match_layer)
        if step in self.warp_steps:
            layers |= self.warp_layers
        if generation and step in self.fg_steps:
            layers |= self.fg_layers
        return frozenset(layers)

    def generation_layers(self, step: int | None) -> frozenset[int]:
        """Layers of the generation branch the core must see at `step`."""
        return self._gen.get(step, frozenset()) if step is not None else frozenset()

    def reference_layers(self, step: int | None) -> frozenset[int]:
        """Layers the reference branch must run at `step` (empty: no reference forward)."""
        return self._ref.get(step, frozenset()) if step is not None else frozenset()
