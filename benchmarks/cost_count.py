"""FLOP attribution for `cost.py`: count one short pipeline call by part, then compose a longer run.

`measure` runs one pipeline call under `FlopCounterMode` and attributes every counted FLOP to the
innermost open part (`Ledger`): a transformer forward by its branch (generation, reference,
inversion) and, for generation and reference forwards, by the kind of step (which of foreground /
match / warp happen at it) and CFG pass; the text encoders; the VAE; `map_tokens` (masks) and the
matcher (`match_flows`) inside it; the foreground score (`ForegroundAccumulator.add_joint` / `add`)
inside generation forwards. Whatever runs outside every part is "other".

`compose` then prices an N-step run from those units: each kind of forward costs the same wherever
it occurs (checked: two occurrences of one kind that differ raise `CompositionError`), so the N-step
cost is each unit times the number of times `StepPlan.build(config, N, depth)` says it occurs.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

import vwarper_hooks as vwarper
import vwarper_hooks.fine.matching as matching
import vwarper_hooks.fine.session as session_module
from vwarper_hooks.contract.plan import StepPlan
from vwarper_hooks.fine.capture import Branch
from vwarper_hooks.fine.foreground import ForegroundAccumulator

PARTS = ("generation", "reference", "inversion", "matching", "masks/fg", "text", "VAE", "other")


class CompositionError(AssertionError):
    """The short call does not determine the long run exactly (a unit varies, or a kind is missing)."""


def step_kind(plan: StepPlan, step: int) -> tuple[bool, bool, bool]:
    """(foreground, match, warp) at `step`: what the generation forward does besides the stock work."""
    return step in plan.fg_steps, step in plan.match_steps, step in plan.warp_steps


def ref_kind(plan: StepPlan, step: int) -> tuple[bool, bool]:
    """(match, warp) at `step`: how deep the reference forward runs and what it keeps."""
    return step in plan.match_steps, step in plan.warp_steps


def ref_steps(plan: StepPlan, steps: int) -> list[int]:
    return [s for s in range(steps) if plan.reference_layers(s)]


@dataclass
class Measured:
    """One pipeline call's FLOPs by part; per-occurrence units where the count depends on the run."""

    total: int = 0
    gen: dict[Any, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))  # (own, fg)
    ref: dict[Any, list[int]] = field(default_factory=lambda: defaultdict(list))
    inv: list[int] = field(default_factory=list)
    plan_warp: list[tuple[int, int]] = field(default_factory=list)  # (masks, matching) per warp step
    once: Counter = field(default_factory=Counter)  # text, VAE, other: once per call
    plan: StepPlan | None = None
    steps: int = 0
    refine: int = 0

    def parts(self) -> dict[str, int]:
        """This call's own FLOPs by part (no composition)."""
        gen = [x for values in self.gen.values() for x in values]
        out = dict.fromkeys(PARTS, 0)
        out.update(generation=sum(g for g, _ in gen), reference=sum(sum(v) for v in self.ref.values()),
                   inversion=sum(self.inv), matching=sum(m for _, m in self.plan_warp))
        out["masks/fg"] = sum(f for _, f in gen) + sum(m for m, _ in self.plan_warp)
        out.update(self.once)
        return out


class Ledger:
    """Exclusive FLOPs per part: a part's own count excludes the parts opened inside it."""

    def __init__(self, counter: FlopCounterMode) -> None:
        self.counter = counter
        self.stack: list[list] = []  # [tag, key, start, children, nested Counter]
        self.m = Measured()

    @contextmanager
    def part(self, tag: str, key: Any = None) -> Iterator[None]:
        frame = [tag, key, self.counter.get_total_flops(), 0, Counter()]
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            inclusive = self.counter.get_total_flops() - frame[2]
            own = inclusive - frame[3]
            if self.stack:
                self.stack[-1][3] += inclusive
                self.stack[-1][4][tag] += inclusive
            self._record(tag, key, own, frame[4])

    def _record(self, tag: str, key: Any, own: int, nested: Counter) -> None:
        m = self.m
        if tag == "generation":
            m.gen[key].append((own, nested["foreground"]))
        elif tag == "reference":
            m.ref[key].append(own)
        elif tag == "inversion":
            m.inv.append(own)
        elif tag == "masks":
            m.plan_warp.append((own, nested["matching"]))
        elif tag in ("text", "VAE"):
            if not self.stack:
                m.once[tag] += own
        elif tag not in ("foreground", "matching"):
            raise ValueError(f"unknown part {tag!r}")

    def finish(self) -> Measured:
        m = self.m
        m.total = self.counter.get_total_flops()
        m.once["other"] = m.total - sum(v for k, v in m.parts().items() if k != "other")
        return m


@contextmanager
def _wrapped(obj: Any, name: str, around: Any, instance: bool) -> Iterator[None]:
    """``obj.name`` runs inside ``around(original, *args, **kwargs)`` for the block, then is restored."""
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return around(original, *args, **kwargs)

    saved = obj.__dict__.get(name)
    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if instance and saved is None:
            delattr(obj, name)
        else:
            setattr(obj, name, saved if saved is not None else original)


def _in_part(ledger: Ledger, tag: str) -> Any:
    def around(original: Any, *args: Any, **kwargs: Any) -> Any:
        with ledger.part(tag):
            return original(*args, **kwargs)

    return around


def _transformer_part(session: Any, ledger: Ledger) -> tuple[str, Any]:
    """Which part a transformer forward is, from the session's route (None: a plain pipeline)."""
    if session is None:
        return "generation", ("plain", 0)
    route, run = session.router.route, session.router.run
    if run is not None:
        ledger.m.plan = run.plan
    if route.branch is Branch.GENERATION:
        return "generation", (step_kind(run.plan, route.step), route.pass_index)
    if route.branch is Branch.REFERENCE:
        return "reference", ref_kind(run.plan, route.step)
    if route.branch is Branch.INTERNAL:
        return "inversion", None
    return "generation", ("outside the loop", 0)


@contextmanager
def instrumented(pipe: Any, ledger: Ledger, session: Any = None, probe: Any = None) -> Iterator[None]:
    """Attribute the FLOPs of `pipe`'s calls inside the block to parts (see the module doc);
    ``probe(session, part, key, forward_kwargs)`` sees every transformer forward before it runs."""

    def transformer(original: Any, *args: Any, **kwargs: Any) -> Any:
        part = _transformer_part(session, ledger)
        if probe is not None:
            probe(session, *part, kwargs)
        with ledger.part(*part):
            return original(*args, **kwargs)

    with ExitStack() as stack:
        stack.enter_context(_wrapped(pipe.transformer, "forward", transformer, instance=True))
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                stack.enter_context(_wrapped(getattr(pipe, name), "forward", _in_part(ledger, "text"), True))
        for name in ("encode", "decode"):
            stack.enter_context(_wrapped(pipe.vae, name, _in_part(ledger, "VAE"), instance=True))
        stack.enter_context(_wrapped(session_module, "map_tokens", _in_part(ledger, "masks"), instance=False))
        stack.enter_context(_wrapped(matching, "match_flows", _in_part(ledger, "matching"), instance=False))
        for name in ("add_joint", "add"):
            stack.enter_context(_wrapped(ForegroundAccumulator, name, _in_part(ledger, "foreground"), False))
        yield


def measure(pipe: Any, kwargs: dict, subject: Any = None, config: Any = None, probe: Any = None) -> Measured:
    """FLOPs of one ``pipe(**kwargs)`` call by part: plain (no subject) or inside `vwarper.inject`."""
    with FlopCounterMode(display=False) as counter:
        ledger = Ledger(counter)
        with ExitStack() as stack:
            session = None if subject is None else stack.enter_context(vwarper.inject(pipe, subject, config))
            stack.enter_context(instrumented(pipe, ledger, session, probe))
            pipe(**kwargs)
    m = ledger.finish()
    m.steps, m.refine = kwargs["num_inference_steps"], 0 if config is None else config.inversion_refine
    return m


def measure_prepare(pipe: Any, kwargs: dict, subject: Any, config: Any) -> Measured:
    """FLOPs of ``vwarper.prepare(pipe, subject, ...)`` for the shape of `kwargs` (a one-off per shape)."""
    with FlopCounterMode(display=False) as counter:
        ledger = Ledger(counter)

        def prepare_call(original: Any, session: Any, **call: Any) -> Any:
            with instrumented(pipe, ledger, session):
                return original(session, **call)

        shape = {k: kwargs[k] for k in ("num_frames", "height", "width", "num_inference_steps")}
        rest = {k: v for k, v in kwargs.items() if k not in shape and k not in ("prompt", "output_type")}
        with _wrapped(session_module.Session, "prepare_call", prepare_call, instance=False):
            vwarper.prepare(pipe, subject, config=config, **shape, **rest)
    m = ledger.finish()
    m.steps, m.refine = kwargs["num_inference_steps"], config.inversion_refine
    # prepare's one stock generation step (the pipeline is interrupted after it) costs the same whatever the
    # run's length: taken as measured, not priced per step
    m.once["generation"] += sum(own for values in m.gen.values() for own, _ in values)
    m.once["masks/fg"] += sum(fg for values in m.gen.values() for _, fg in values)
    m.gen.clear()
    return m


def _unit(values: list, what: str) -> Any:
    """The one value every occurrence of a kind of work has (else the composition would not be exact)."""
    if not values:
        raise CompositionError(f"{what}: never occurred in the short call, so its cost is unknown")
    if any(v != values[0] for v in values):
        raise CompositionError(f"{what}: occurrences differ ({values}), so no single unit prices them")
    return values[0]


def _check(count: int, expected: int, what: str) -> None:
    if count != expected:
        raise CompositionError(f"{what}: {count} in the short call, but its plan says {expected}")


def _copies(count: int, per_copy: int, what: str) -> int:
    """How many times `per_copy` forwards ran (subjects, photos), refusing a count that does not divide."""
    copies, rest = divmod(count, per_copy)
    _check(rest, 0, f"{what} (leftover over {per_copy} per copy)")
    return copies


def compose(m: Measured, steps: int, plan: StepPlan | None) -> dict[str, int]:
    """FLOPs by part of the call `m` measured, priced for a run of `steps` steps following `plan`
    (None: a plain call). Work done once per call (text, VAE, other) is taken as measured."""
    out = dict.fromkeys(PARTS, 0)
    out.update(m.once)
    for step in range(steps if m.gen else 0):
        if plan is None:  # plain: every forward of a step is alike (CFG as one batch or as two calls)
            per_step, rest = divmod(len(m.gen[("plain", 0)]), m.steps)
            _check(rest, 0, "plain forwards per step")
            keys = [("plain", 0)] * per_step
        else:
            keys = [(step_kind(plan, step), p) for p in sorted({key[1] for key in m.gen})]
        for key in keys:
            own, fg = _unit(m.gen[key], f"generation forward {key}")
            out["generation"] += own
            out["masks/fg"] += fg
    if m.ref:  # one forward per reference step and subject (a subject's photos run as one batch)
        copies = _copies(sum(map(len, m.ref.values())), len(ref_steps(m.plan, m.steps)), "reference forwards")
        for step in ref_steps(plan, steps):
            out["reference"] += copies * _unit(m.ref[ref_kind(plan, step)], f"reference forward {ref_kind(plan, step)}")
    if m.inv:  # one inversion per photo of every subject
        per_photo = (m.steps - min(ref_steps(m.plan, m.steps))) * (1 + m.refine)
        copies = _copies(len(m.inv), per_photo, "inversion forwards")
        count = (steps - min(ref_steps(plan, steps))) * (1 + m.refine)
        out["inversion"] = _unit(m.inv, "inversion forward") * count * copies
    if m.plan_warp:
        _check(len(m.plan_warp), len(m.plan.warp_steps), "warp plans")
        masks, match = _unit(m.plan_warp, "warp plan (masks, matching)")
        out["masks/fg"] += masks * len(plan.warp_steps)
        out["matching"] += match * len(plan.warp_steps)
    return out
