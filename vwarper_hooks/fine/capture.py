"""Capture and routing: the `LayerRouter` the adapters' attention processors talk to.

The router's state is explicit and in two parts:

- `Route` (what the forward running now is): which branch, which step and CFG pass, which layers
  the core must see, and for the reference branch the deepest layer it needs (then it stops).
  The session sets it around each forward with `Router.routing`; between forwards it is idle and
  every processor runs the stock computation.
- `RunState` (what one pipeline call has gathered): its config, plan, matcher and injector, the
  subject token's place, the foreground accumulator, the match features of both branches, the
  reference values of the warp layers, and the step's warp plan.

Per routed call: the generation branch hands the match layer to the matcher, the subject's text
attention to the foreground score, and the warp layers to the injector; the reference branch
hands over its match features and warp-layer values, and stops after its deepest layer.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import WarpConfig
from ..contract.calls import AttentionCall, LayerRouter
from ..contract.parts import Injector, Matcher, ReferenceFeatures, TokenMap
from ..contract.plan import StepPlan
from ..contract.processors import attend_with_lse
from .foreground import ForegroundAccumulator
from .warping import key_mask


class Branch(str, enum.Enum):
    """Which forward is running: the user's generation, our reference branch, or our own inversion."""

    GENERATION = "generation"
    REFERENCE = "reference"
    INTERNAL = "internal"


class StopReference(Exception):
    """Raised after the deepest layer the reference branch needs (its forward ends there)."""


@dataclass(frozen=True)
class Route:
    """The forward running now, as far as routing goes (the default: none of ours, all stock)."""

    branch: Branch | None = None
    step: int | None = None
    pass_index: int = 0
    layers: frozenset[int] = frozenset()
    deepest: int = -1
    subject: int = 0  # the reference branch running: which subject's


@dataclass
class SubjectRun:
    """One subject's part of a run: where its token is, where it is in the video, its references."""

    positions: slice | None  # the subject token's ids in the prompt's text tokens (None: unknown)
    foreground: ForegroundAccumulator = field(default_factory=ForegroundAccumulator)
    ref_match: list[Any] = field(default_factory=list)  # what the matcher kept, per reference photo
    ref_values: dict[int, ReferenceFeatures] = field(default_factory=dict)  # (k, heads, N, d) per warp layer


@dataclass
class RunState:
    """Everything one pipeline call gathers, dropped when the next call starts or the session closes."""

    config: WarpConfig
    plan: StepPlan
    matcher: Matcher
    injector: Injector
    subjects: list[SubjectRun]
    gen_match: Any = None  # the generation's match features (one, whatever the number of subjects)
    warp: TokenMap | None = None
    #: per warp layer, every reference of every subject side by side: (1, heads, sum of k*N, d)
    warp_values: dict[int, ReferenceFeatures] = field(default_factory=dict)

    @property
    def subject(self) -> slice | None:
        """The (first) subject's token positions."""
        return self.subjects[0].positions if self.subjects else None


def _text_columns(text: slice, subject: slice) -> slice:
    """The subject token's columns among the attention's keys."""
    return slice(text.start + subject.start, text.start + subject.stop)


def _matching(call: AttentionCall) -> AttentionCall:
    """The call as the matcher reads it: every head's Q/K (gathered under context parallelism)."""
    return call if call.shards is None else call.shards.matching_view(call)


def _lse_mask(call: AttentionCall, rows: int | None = None) -> torch.Tensor | None:
    """The model's key mask for `attend_with_lse` (None where every key counts)."""
    if call.text_valid is None:
        return None
    keep = key_mask(call)
    return keep if rows is None else keep[rows : rows + 1]


def _recording_lse(attend: Any, mask: torch.Tensor | None, store: list[torch.Tensor]) -> Any:
    """An ``attend`` that computes what `attend` does and keeps the first call's log-sum-exp in `store`.

    It holds the call's own ``attend`` and key mask, never the call: the call keeps this function as its
    ``attend``, and a closure over the call would make a reference cycle that keeps the whole batch's
    Q/K/V alive until the cyclic garbage collector happens to run.
    """

    def attend_recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if store:
            return attend(q, k, v)
        out, lse = attend_with_lse(q, k, v, mask)
        store.append(lse)
        return out

    return attend_recording


class Router(LayerRouter):
    """The core's `LayerRouter` for one session: keeps every processor's ``active`` flag (`keeps_flags`)."""

    keeps_flags = True

    def __init__(self) -> None:
        self._processors: list[Any] = []
        self._route = Route()
        self.run: RunState | None = None
        #: (branch, step, layer) -> routed attention calls; ("warp", step, layer) counts injections
        self.calls: Counter[tuple[str, int, int]] = Counter()
        #: told each routed layer before it computes its Q/K/V (the session's lockstep reference)
        self.on_enter: Any = None

    def register(self, processor: Any) -> None:
        """A `RoutedProcessor` installed for this router: its ``active`` flag follows every route."""
        self._processors.append(processor)
        processor.active = processor.asks()

    @property
    def route(self) -> Route:
        return self._route

    @route.setter
    def route(self, route: Route) -> None:
        """Set the route and, outside any compiled code, every processor's ``active`` flag."""
        self._route = route
        for processor in self._processors:
            processor.active = processor.asks()

    def release(self) -> None:
        """Forget the processors (they are uninstalled): their flags go back to off."""
        for processor in self._processors:
            processor.active = False
        self._processors = []

    @contextmanager
    def routing(self, route: Route) -> Iterator[None]:
        """Route calls as `route` says for the block, then go idle again (also after an error)."""
        previous, self.route = self.route, route
        try:
            yield
        finally:
            self.route = previous

    def entering(self, layer: int) -> None:
        """A routed layer is about to compute its Q/K/V (called by `RoutedProcessor`, eagerly)."""
        if self.on_enter is not None:
            self.on_enter(layer)

    # ----------------------------------------------------------------- the LayerRouter protocol
    def wants(self, layer: int) -> bool:
        return layer in self.route.layers

    def wants_text(self, layer: int) -> bool:
        """True when video->text scores of `layer` feed the foreground mask now."""
        route, run = self.route, self.run
        return (
            route.branch is Branch.GENERATION
            and route.pass_index == 0
            and run is not None
            and any(s.positions is not None for s in run.subjects)
            and run.plan.wants_text(route.step, layer)
        )

    def observe_text_attention(
        self, layer: int, query_video: torch.Tensor, key_text: torch.Tensor, text_valid: torch.Tensor | None = None
    ) -> None:
        """Accumulate each subject token's share of video->text attention.

        :param query_video: (B, heads, N, d) video queries as the attention sees them (post-RoPE);
            the last sample of the batch is the conditional one.
        :param key_text: (B, heads, T, d) text keys.
        :param text_valid: (B, T) bool, False for padded text keys the model masks out; None: all real.
        """
        valid = None if text_valid is None else text_valid[-1]
        for subject in self.run.subjects:
            if subject.positions is not None:
                subject.foreground.add(query_video[-1], key_text[-1], subject.positions, valid)

    def process(self, call: AttentionCall) -> torch.Tensor:
        route = self.route
        self.calls[(route.branch.value, -1 if route.step is None else route.step, call.layer)] += 1
        if route.branch is Branch.REFERENCE:
            return self._reference(call)
        return self._generation(call)

    # ----------------------------------------------------------------- per branch
    def _generation(self, call: AttentionCall) -> torch.Tensor:
        run, step, layer = self.run, self.route.step, call.layer
        cond = call.query.shape[0] - 1  # CFG batches are [uncond, cond]; separate passes: cond first
        if self.route.pass_index == 0 and layer == run.plan.match_layer and step in run.plan.match_steps:
            run.gen_match = run.matcher.features(_matching(call), cond)
        text_scores = call.text.stop > call.text.start and self.wants_text(layer)
        joint = text_scores and run.config.fg_softmax == "joint"
        if text_scores and not joint:
            query = call.rope(call.query[cond : cond + 1, :, call.video])
            valid = None if call.text_valid is None else call.text_valid[cond : cond + 1]
            self.observe_text_attention(layer, query, call.key[cond : cond + 1, :, call.text], valid)
        lse: list[torch.Tensor] = []
        if joint:  # the attention below also returns each query's log-sum-exp (first attend only)
            call.attend = _recording_lse(call.attend, _lse_mask(call), lse)
        if run.warp is not None and layer in run.plan.warp_layers and step in run.plan.warp_steps:
            self.calls[("warp", step, layer)] += 1
            out = run.injector.attend(call, run.warp_values[layer], run.warp)
        else:
            out = call.default()
        if joint:
            self._add_joint(call, cond, lse[0] if lse else None)
        return out

    def _add_joint(self, call: AttentionCall, cond: int, lse: torch.Tensor | None) -> None:
        """The joint-softmax foreground score of the conditional sample; q and k are rotated by now."""
        q, k, v = (x[cond : cond + 1] for x in (call.query, call.key, call.value))
        if lse is None:  # an injector that attends its own way (the concat baseline): one more pass
            lse = attend_with_lse(q, k, v, _lse_mask(call, cond))[1]
        else:
            lse = lse[cond : cond + 1]
        for subject in self.run.subjects:
            if subject.positions is not None:
                columns = _text_columns(call.text, subject.positions)
                subject.foreground.add_joint(q[0, :, call.video], k[0, :, columns], lse[0, :, call.video])

    def _reference(self, call: AttentionCall) -> torch.Tensor:
        run, step, layer = self.run, self.route.step, call.layer
        subject = run.subjects[self.route.subject]
        if layer == run.plan.match_layer and step in run.plan.match_steps:
            view = _matching(call)
            subject.ref_match = [run.matcher.features(view, i) for i in range(call.query.shape[0])]
        call.rotate_(call.query, call.key)
        if step in run.plan.warp_steps and layer in run.plan.warp_layers:
            key = call.key[:, :, call.video] if run.injector.needs_reference_keys else None
            subject.ref_values[layer] = ReferenceFeatures(value=call.value[:, :, call.video], key=key)
        if layer >= self.route.deepest:
            raise StopReference
        return call.attend(call.query, call.key, call.value)
