"""Adapter conformance kit: the checks every adapter must pass, for any tiny model you point it at.

Usage: ``check_adapter(case_from_pipeline(tiny_pipe)).raise_if_failed()`` (or build a
``ConformanceCase(adapter, transformer, forward_kwargs)``), or the pytest mixin: subclass
`AdapterConformance` as ``Test...`` and return your case from ``conformance_case``. Checks:

- ``capture``: the Q/K/V handed to the core equal a recomputation by forward hooks on the stock model's
  ``norm_q``/``norm_k`` (else ``to_q``/``to_k``), ``to_v`` and, for separately projected text,
  ``norm_added_k``/``add_k_proj``/``add_v_proj``, at the first and last layer; with a separate text
  attention (``adapter.text_attention_layers``) the observed text keys too.
- ``position_free``: with a constant latent, first-layer RoPE-free Q/K are identical across tokens
  (post-RoPE ones are not: checked too, so the check is informative).
- ``identity``: processors installed but not routing (or routing through ``AttentionCall.default``) give
  bit-identical outputs; after uninstall the original processors are back.
- ``cleanup``: an exception inside a routed layer propagates; uninstalling restores processors and hooks.
- ``text_span``: video span = the token grid, text span = the text length (joint) or the text attention's
  keys (separate); changing the text leaves first-layer video Q/K/V unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConformanceError
from .cases import ConformanceCase, case_from_pipeline, forward_inputs
from .probes import ATOL, RTOL, _bhnd, _Boom, _compare, _first, _hook_outputs, _PassThrough, _Recorder, _state

__all__ = ["CHECKS", "AdapterConformance", "ConformanceCase", "ConformanceError", "ConformanceReport",
           "case_from_pipeline", "check_adapter", "forward_inputs"]


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str = ""


@dataclass
class ConformanceReport:
    adapter: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def raise_if_failed(self) -> None:
        if not self.passed:
            lines = "\n".join(f"  - {r.name}: {r.message}" for r in self.failures())
            raise ConformanceError(f"adapter {self.adapter!r} failed {len(self.failures())} check(s):\n{lines}")

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "passed": self.passed, "results": [vars(r) for r in self.results]}


def _verdict(name: str, problems: list[str], expected: str, fix: str, ok: str) -> CheckResult:
    """A failed result reading "Expected ..., but got .... Do ...", or a passed one."""
    if problems:
        return CheckResult(name, False, f"Expected {expected}, but got: {'; '.join(problems)}. {fix}")
    return CheckResult(name, True, ok)


def _record(case: ConformanceCase, layers: set[int], **overrides: Any) -> _Recorder:
    recorder = _Recorder(layers)
    uninstall = case.adapter.install(case.transformer, recorder)
    try:
        case.forward(**overrides)
    finally:
        uninstall()
    return recorder


def _capture_problems(case: ConformanceCase, layer: int) -> list[str]:
    attn = case.adapter.attention_layers(case.transformer)[layer]
    heads = int(getattr(attn, "heads", 1))
    wanted = {
        "q": _first(attn, "norm_q", "to_q"),
        "k": _first(attn, "norm_k", "to_k"),
        "v": _first(attn, "to_v"),
        "tq": _first(attn, "norm_added_q", "add_q_proj"),
        "tk": _first(attn, "norm_added_k", "add_k_proj"),
        "tv": _first(attn, "add_v_proj"),
    }
    text_layers = getattr(case.adapter, "text_attention_layers", None)
    if text_layers is not None:
        wanted["xk"] = _first(text_layers(case.transformer)[layer], "norm_k", "to_k")
    stock = _hook_outputs({k: m for k, m in wanted.items() if m is not None}, case.forward)
    rec = _record(case, {layer})
    if layer not in rec.calls:
        return [f"layer {layer}: the router was asked for it, but the adapter never called process()"]
    call, problems = rec.calls[layer], []
    total = call["q"].shape[2]
    _compare(f"layer {layer} rope() vs the rotation attend() used", call["q_rope"], call["q_rotated"], problems)
    for name in ("q", "k", "v"):
        if name not in stock:
            problems.append(
                f"layer {layer} {name}: no projection module found to recompute it from (looked for "
                f"{'norm_' + name + ' / ' if name != 'v' else ''}to_{name}); name the attention's projections "
                "like diffusers does, or test this layer with your own recomputation"
            )
            continue
        ref = _bhnd(stock[name], heads)
        if ref.shape[2] == total:
            _compare(f"layer {layer} {name}", call[name], ref, problems)
        else:  # the projection saw the video stream only; text has its own (add_*_proj)
            _compare(f"layer {layer} video {name}", call[name][:, :, call["video"]], ref, problems)
            if "t" + name in stock:
                text_ref = _bhnd(stock["t" + name], heads)
                _compare(f"layer {layer} text {name}", call[name][:, :, call["text"]], text_ref, problems)
    if "xk" in stock and layer in rec.text:
        _compare(f"layer {layer} cross-attention text keys", rec.text[layer][1], _bhnd(stock["xk"], heads), problems)
    return problems


def check_capture(case: ConformanceCase) -> CheckResult:
    """Captured Q/K/V equal an independent recomputation (hooks on the stock model's projections)."""
    depth = len(case.adapter.attention_layers(case.transformer))
    layers = case.layers if case.layers is not None else tuple(sorted({0, depth - 1}))
    problems = [p for layer in layers for p in _capture_problems(case, layer)]
    return _verdict(
        "capture",
        problems,
        "the captured Q/K/V to equal the stock projections",
        "Take Q/K after QK-norm, V after to_v, and keep the token order of AttentionCall.text/video.",
        f"layers {list(layers)}",
    )


def check_position_free(case: ConformanceCase) -> CheckResult:
    """Identical token content at different positions gives identical captured Q/K at the first layer."""
    latents = case.latents()
    rec = _record(case, {0}, **case.with_latents(torch.full_like(latents, 0.5)))
    if 0 not in rec.calls:
        return CheckResult("position_free", False, "Expected a routed call at layer 0, but got none.")
    call = rec.calls[0]
    spread = {}
    for name in ("q", "k"):
        video = call[name][:, :, call["video"]].float()
        spread[name] = float((video - video[:, :, :1]).abs().max())
    rotated = call["q_rope"].float()
    informative = float((rotated - rotated[:, :, :1]).abs().max()) > 1e-4
    if max(spread.values()) > ATOL:
        return CheckResult(
            "position_free",
            False,
            f"Expected identical Q/K for identical video tokens at layer 0 (RoPE-free), but they differ by "
            f"up to {max(spread.values()):.3g}: the capture depends on position (post-RoPE?). Capture Q/K "
            "after QK-norm and before rotary, cloned (processors may rotate in place).",
        )
    note = "" if informative else " (not informative: rope() leaves tokens identical; no RoPE in this model?)"
    return CheckResult("position_free", True, "identical tokens give identical Q/K" + note)


def check_identity(case: ConformanceCase) -> CheckResult:
    """Installed but idle, or routing everything through `AttentionCall.default`: bit-identical outputs."""
    before, stock = _state(case), case.forward()
    problems = []
    for label, router in (("idle router", _Recorder(set())), ("pass-through router", _PassThrough())):
        uninstall = case.adapter.install(case.transformer, router)
        try:
            if not torch.equal(case.forward(), stock):
                problems.append(f"with a {label} the output differs from stock")
        finally:
            uninstall()
    if _state(case) != before or case.adapter.is_installed(case.transformer):
        problems.append("after uninstall the processors or hooks are not the original ones")
    return _verdict(
        "identity",
        problems,
        "bit-identical outputs",
        "Call the original processor when the router does not want a layer, and replicate it exactly otherwise.",
        "bit-identical with idle and pass-through routers",
    )


def check_cleanup(case: ConformanceCase) -> CheckResult:
    """An exception inside a routed layer propagates; uninstall then restores everything."""
    before, stock = _state(case), case.forward()
    raised = False
    uninstall = case.adapter.install(case.transformer, _Recorder({0}, fail=True))
    try:
        case.forward()
    except _Boom:
        raised = True
    finally:
        uninstall()
    problems = []
    if not raised:
        problems.append("the exception raised by the router did not propagate")
    if _state(case) != before or case.adapter.is_installed(case.transformer):
        problems.append("processors or hooks were not restored")
    if not torch.equal(case.forward(), stock):
        problems.append("the output differs from stock afterwards")
    return _verdict(
        "cleanup",
        problems,
        "a clean model after an exception",
        "Let exceptions through and restore the original processors in uninstall().",
        "restored after an exception",
    )


def check_text_span(case: ConformanceCase) -> CheckResult:
    """Video span = token grid; text span = text length; text changes leave first-layer video Q/K/V alone."""
    grid = case.adapter.token_grid(case.transformer, case.latents())
    n_video = math.prod(grid)
    rec = _record(case, {0})
    call, problems = rec.calls.get(0), []
    if call is None:
        return CheckResult("text_span", False, "Expected a routed call at layer 0, but got none.")
    video, text = call["video"], call["text"]
    if video.stop - video.start != n_video:
        problems.append(f"video span {video} holds {video.stop - video.start} tokens, the grid {grid} has {n_video}")
    texts = (case.text_key, *getattr(case.adapter, "extra_text_kwargs", ())) if case.text_key else ()
    text_len = sum(case.inputs[k].shape[1] for k in texts if k in case.inputs)
    seen_text = (
        text.stop - text.start if text.stop > text.start else rec.text.get(0, (None, torch.empty(0, 0, 0)))[1].shape[2]
    )
    if case.text_key and seen_text != text_len:
        problems.append(f"text span holds {seen_text} tokens, but the model got {text_len} text tokens")
    if max(video.start, text.start) < min(video.stop, text.stop):
        problems.append(f"video span {video} and text span {text} overlap")
    if case.text_key and not problems:
        changed = case.inputs[case.text_key] + 1.0
        other = _record(case, {0}, **{case.text_key: changed})
        for name in ("q", "k", "v"):
            if not torch.allclose(other.calls[0][name][:, :, video], call[name][:, :, video], atol=ATOL, rtol=RTOL):
                problems.append(f"first-layer video {name} changed with the text (the spans are mixed up)")
        new_keys = other.calls[0]["k"][:, :, text] if text.stop > text.start else other.text.get(0, (None, None))[1]
        old_keys = call["k"][:, :, text] if text.stop > text.start else rec.text.get(0, (None, None))[1]
        if new_keys is not None and torch.allclose(new_keys, old_keys):
            problems.append("text keys did not change with the text")
    return _verdict(
        "text_span",
        problems,
        "the token layout to match the model",
        "Fix AttentionCall.text / video.",
        f"{n_video} video tokens, {text_len} text tokens",
    )


CHECKS: dict[str, Callable[[ConformanceCase], CheckResult]] = {
    "capture": check_capture,
    "position_free": check_position_free,
    "identity": check_identity,
    "cleanup": check_cleanup,
    "text_span": check_text_span,
}


def check_adapter(case: ConformanceCase, checks: tuple[str, ...] | None = None) -> ConformanceReport:
    """Run the conformance checks (all by default) and report each; never raises for a failed check."""
    report = ConformanceReport(case.adapter.name)
    for name in checks or tuple(CHECKS):
        try:
            report.results.append(CHECKS[name](case))
        except Exception as exc:  # a crash is a failure of that check, reported with the others
            report.results.append(CheckResult(name, False, f"crashed: {type(exc).__name__}: {exc}"))
    return report


class AdapterConformance:
    """Pytest mixin: subclass it as ``Test...`` and return your case from `conformance_case`."""

    def conformance_case(self) -> ConformanceCase:
        raise NotImplementedError("Return a ConformanceCase(adapter, tiny_transformer, forward_kwargs).")

    def _run(self, name: str) -> None:
        result = CHECKS[name](self.conformance_case())
        assert result.passed, f"{name}: {result.message}"

    def test_conformance_capture(self) -> None:
        self._run("capture")

    def test_conformance_position_free(self) -> None:
        self._run("position_free")

    def test_conformance_identity(self) -> None:
        self._run("identity")

    def test_conformance_cleanup(self) -> None:
        self._run("cleanup")

    def test_conformance_text_span(self) -> None:
        self._run("text_span")
