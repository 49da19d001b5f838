"""What the page offers by default for each model: sizes, training and warp settings, an example prompt.

- ``learned`` (the default): the world model shipped with the package, 32x32 pixels, 9 frames, its own
  vocabulary; the demo's training (150 steps, rank 8) and the match / warp layers measured for it.
- ``tiny``: the tiny random model (machinery, not quality), 32x32, 9 frames, 20 steps.
- anything else (a hub id or a folder): the paper's settings (25 frames, 50 steps, `CoarseConfig`'s and
  `WarpConfig`'s defaults) at the model's own default size.

The hidden test knobs of ``vwarper ui`` (`Overrides`) shrink the defaults so that the browser tests run in
seconds; the warp window then follows the paper's steps 3-19 of 50, scaled to the steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ...coarse import CoarseConfig
from ...config import WarpConfig
from ...contract.plan import scaled_window
from ...units import video_units
from ..loading import LEARNED_MODELS, TINY_MODELS

#: videos smaller than this (pixels, shorter side) are shown and saved scaled up by a whole factor
DISPLAY_MIN = 192


@dataclass(frozen=True)
class Overrides:
    """Hidden test sizes (``vwarper ui --train-steps 2 --steps 4 --frames 9``); None keeps the model's."""

    train_steps: int | None = None
    steps: int | None = None
    frames: int | None = None


@dataclass(frozen=True)
class PageDefaults:
    """The values the page starts with (every one can be changed in the page)."""

    model: str
    note: str
    frames: int
    steps: int
    height: int
    width: int
    guidance: float
    train_steps: int
    rank: int
    lora_lr: float
    token_lr: float
    batch_size: int
    match_layer: int
    warp_layers: tuple[int, int]
    warp_steps: tuple[int, int]
    tau_fg: float
    tau_cc: float
    prompt_template: str  # with {token} and {class_word}
    example_token: str
    example_class: str

    @property
    def display_scale(self) -> int:
        return max(1, -(-DISPLAY_MIN // max(1, min(self.height, self.width))))

    def coarse_config(self, steps: int, rank: int, lora_lr: float, token_lr: float, cuda: bool) -> CoarseConfig:
        """The stage-1 settings of a training started from the page."""
        small = self.model in LEARNED_MODELS + TINY_MODELS
        return CoarseConfig(steps=steps, rank=rank, lora_lr=lora_lr, token_lr=token_lr, batch_size=self.batch_size,
                            mixed_precision="bf16" if cuda else "no", gradient_checkpointing=not small,
                            height=self.height if small else None, width=self.width if small else None)

    def prompt_for(self, subjects: list[tuple[str, str]]) -> str:
        """An example prompt naming every (token, class word)."""
        if not subjects:
            return ""
        if self.model in LEARNED_MODELS:
            return self.prompt_template.format(token=subjects[0][0], class_word=subjects[0][1])
        named = " and ".join(f"a {t} {c}" for t, c in subjects)
        return self.prompt_template.replace("a {token} {class_word}", named)


def page_defaults(model: str, pipe: Any, overrides: Overrides | None = None) -> PageDefaults:
    """The defaults for `model` (as loaded in `pipe`), with the test `overrides` applied."""
    units = video_units(pipe)
    config = pipe.transformer.config
    height = int(config.sample_height) * units.spatial
    width = int(config.sample_width) * units.spatial
    paper = WarpConfig()
    base = dict(model=model, height=height, width=width, guidance=6.0, tau_fg=paper.tau_fg, tau_cc=paper.tau_cc,
                match_layer=paper.match_layer, warp_layers=tuple(paper.warp_layers),
                warp_steps=tuple(paper.warp_steps))
    if model in LEARNED_MODELS:
        from ...world import learned_layers  # the world kit: only for the learned model

        layers = learned_layers()
        defaults = PageDefaults(
            **{**base, "match_layer": layers.get("match_layer", base["match_layer"]),
               "warp_layers": tuple(layers.get("warp_layers", base["warp_layers"]))},
            note="the learned world model shipped with the package: 32x32 pixels, 9 frames, its own small "
                 "vocabulary (colours, textures, shapes, directions); trains a subject in about a minute on a CPU",
            frames=9, steps=50, train_steps=150, rank=8, lora_lr=1e-3, token_lr=5e-3, batch_size=2,
            prompt_template="a {token} {class_word} moving left on a flat blue background",
            example_token="<my-shape>", example_class="orange striped circle")
    elif model in TINY_MODELS:
        defaults = PageDefaults(
            **base, note="the tiny RANDOM test model: it shows the machinery (masks, flows), not quality",
            frames=9, steps=20, train_steps=20, rank=4, lora_lr=1e-3, token_lr=5e-3, batch_size=1,
            prompt_template="a photo of a {token} {class_word} on the beach",
            example_token="<my-clock>", example_class="clock")
    else:
        coarse = CoarseConfig()
        defaults = PageDefaults(
            **base, note=f"{model}: the paper's settings (25 frames, 50 steps, 1000 training steps)",
            frames=25, steps=50, train_steps=coarse.steps, rank=coarse.rank, lora_lr=coarse.lora_lr,
            token_lr=coarse.token_lr, batch_size=coarse.batch_size,
            prompt_template="a {token} {class_word} on the beach", example_token="<my-dog>", example_class="dog")
    return _apply(defaults, overrides or Overrides())


def _apply(defaults: PageDefaults, overrides: Overrides) -> PageDefaults:
    changes: dict[str, Any] = {}
    if overrides.train_steps:
        changes["train_steps"] = overrides.train_steps
    if overrides.frames:
        changes["frames"] = overrides.frames
    if overrides.steps:
        changes["steps"] = overrides.steps
        changes["warp_steps"] = scaled_window(overrides.steps)  # the paper's steps 3-19 of 50, scaled
    return replace(defaults, **changes)
