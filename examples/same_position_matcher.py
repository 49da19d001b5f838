"""A third-party matcher plugin: every generation token reads the reference token at the same place.

It is the "no correspondence" ablation of V-Warper (value warping without matching), and the
smallest complete example of the `register_matchers` hook. Register it from a plugin module exposed
under the ``vwarper_hooks`` entry-point group, or at run time::

    from vwarper_hooks.plugins import register_plugin
    register_plugin(SamePositionPlugin(), name="same-position")
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(matcher="same_position")):
        ...
"""

from __future__ import annotations

import torch

from vwarper_hooks.config import WarpConfig
from vwarper_hooks.contract import AttentionCall, MatchResult, hookimpl


class SamePositionMatcher:
    """Flows that map each video token to itself, in both directions."""

    name = "same_position"

    def __init__(self) -> None:
        self.calls = 0

    def features(self, call: AttentionCall, sample: int) -> int:
        return call.video.stop - call.video.start  # only the number of video tokens is needed

    def match(self, gen: int, refs: list[int], grid: tuple[int, int, int]) -> MatchResult:
        """Each token reads the first photo at its own place; each photo's token goes back to its place."""
        self.calls += 1
        flow = torch.arange(gen)
        return MatchResult(flow=flow, back=flow.repeat(len(refs)))


class SamePositionPlugin:
    """The plugin object: pluggy calls its `@hookimpl` methods."""

    def __init__(self) -> None:
        self.made: list[SamePositionMatcher] = []

    def make(self, config: WarpConfig) -> SamePositionMatcher:
        """The factory: called once per `inject` with its `WarpConfig`."""
        self.made.append(SamePositionMatcher())
        return self.made[-1]

    @hookimpl
    def register_matchers(self, register) -> None:
        register(SamePositionMatcher.name, self.make)
