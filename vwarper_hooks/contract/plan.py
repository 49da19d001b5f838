"""What V-Warper does at each denoising step: which layers each branch must show the core.

Built once per run from the `WarpConfig` and the run's step count. Matching at step t uses the
match layer's features of step t-1 (paper 4.3), so warping starts at step 1 at the earliest; the
foreground score is accumulated from step 0 up to t-1 (appendix A: "across denoising steps").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PAPER_STEPS, PAPER_WARP_STEPS, WarpConfig
from ..errors import ConfigError


def span(bounds: tuple[int, int] | None) -> frozenset[int]:
    """The inclusive range ``(first, last)`` as a set (empty for None)."""
    return frozenset() if bounds is None else frozenset(range(bounds[0], bounds[1] + 1))


def ranges(values: frozenset[int] | set[int]) -> str:
    """``{4, 5, 6, 9}`` -> ``"4-6, 9"``."""
    out: list[str] = []
    for v in sorted(values):
        if out and v == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def scaled_window(steps: int) -> tuple[int, int]:
    """The paper's warp steps (3-19 of 50) scaled to a run of `steps` steps: the same share of the run, never
    step 0 (it has no previous step to match from) nor past the last step."""
    first = max(1, round(PAPER_WARP_STEPS[0] * steps / PAPER_STEPS))
    return first, max(first, min(steps - 1, round(PAPER_WARP_STEPS[1] * steps / PAPER_STEPS)))


def warps_nothing(config: WarpConfig, num_steps: int) -> bool:
    """Whether `config` warps (``warp=True``) but its warp window misses every step of a `num_steps` run."""
    first, last = config.warp_steps
    return config.warp and (last < 1 or first > num_steps - 1)


def empty_window(warp_steps: tuple[int, int], num_steps: int) -> str:
    """Why a warp window that misses every step of the run is refused, and what to pass instead."""
    if num_steps < 2:
        fix = "Do run at least 2 denoising steps"
    else:
        first = min(max(1, round(3 * num_steps / 50)), num_steps - 1)
        fix = f"Do pass warp_steps within 1-{num_steps - 1}, e.g. ({first}, {max(first, round(19 * num_steps / 50))})"
    steps = f"steps 1-{num_steps - 1}" if num_steps > 1 else "steps from 1 on"
    return (
        f"warp_steps: Expected warp_steps to overlap this run's {steps} (a {num_steps}-step run; "
        f"step 0 has no previous step to match from), but got {tuple(warp_steps)}: no step would be warped. "
        f"{fix}, or WarpConfig(warp=False) for the coarse stage alone."
    )


@dataclass(frozen=True)
class StepPlan:
    """Layers each branch needs at each step (flat layer indices, 0-based steps)."""

    warp_steps: frozenset[int]
    match_steps: frozenset[int]  # steps whose match-layer features are captured (t-1 for warp t)
    fg_steps: frozenset[int]
    match_layer: int
    warp_layers: frozenset[int]
    fg_layers: frozenset[int]
    #: why some configured warp steps do not happen in this run (None: all of them do)
    clipped: str | None = None
    _gen: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)
    _ref: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, config: WarpConfig, num_steps: int, depth: int) -> StepPlan:
        if not config.warp:
            empty: frozenset[int] = frozenset()
            return cls(empty, empty, empty, config.match_layer, empty, empty)
        if warps_nothing(config, num_steps):
            raise ConfigError([empty_window(config.warp_steps, num_steps)])
        wanted = span(config.warp_steps)
        warp = frozenset(s for s in wanted if 1 <= s < num_steps)
        clipped = None
        if warp != wanted:
            clipped = (
                f"warp steps {ranges(wanted - warp)} dropped: a {num_steps}-step run has steps 0-{num_steps - 1}, "
                "and step 0 has no previous step to match from"
            )
        match = frozenset(s - 1 for s in warp)
        fg = frozenset(range(0, max(warp))) if (warp and config.mask) else frozenset()
        fg_layers = span(config.fg_layers) if config.fg_layers is not None else frozenset(range(depth))
        plan = cls(warp, match, fg, config.match_layer, span(config.warp_layers), fg_layers, clipped)
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

    def generation_layers(self, step: int, pass_index: int = 0, text_outside: bool = False) -> frozenset[int]:
        """Layers of the generation branch the core must see at `step`.

        :param pass_index: the transformer call within the step; a later CFG pass (families that run
            CFG as separate calls) only warps: match features and text scores come from pass 0.
        :param text_outside: the family's video->text scores come from a separate attention (Wan's
            cross-attention), which asks `wants_text` itself: only match and warp layers are routed.
        """
        if pass_index > 0:
            return self.warp_layers if step in self.warp_steps else frozenset()
        if text_outside:
            return self._ref.get(step, frozenset())
        return self._gen.get(step, frozenset())

    def reference_layers(self, step: int) -> frozenset[int]:
        """Layers the reference branch must run at `step` (empty: no reference forward)."""
        return self._ref.get(step, frozenset())

    def wants_text(self, step: int, layer: int) -> bool:
        """Whether the foreground score reads `layer`'s video->text attention at `step`."""
        return step in self.fg_steps and layer in self.fg_layers
