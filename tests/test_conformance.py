"""The adapter conformance kit: every built-in adapter passes; deliberately broken adapters fail."""

from __future__ import annotations

import pytest
import torch

from vwarper_hooks.contract import AttentionCall
from vwarper_hooks.porting.conformance import AdapterConformance, ConformanceCase, ConformanceError, check_adapter
from vwarper_hooks.porting.families import TINY_FAMILIES
from vwarper_hooks.testing import case_from_pipeline, tiny_cogvideox_pipeline, tiny_pipeline

FAMILIES = list(TINY_FAMILIES)


@pytest.fixture(scope="module", params=FAMILIES)
def case(request) -> ConformanceCase:
    kwargs = {"num_layers": 4} if request.param == "cogvideox" else {}
    return case_from_pipeline(tiny_pipeline(request.param, **kwargs))


def test_builtin_adapters_pass_every_check(case):
    report = check_adapter(case)
    assert [r.name for r in report.results] == ["capture", "position_free", "identity", "cleanup", "text_span"]
    assert report.passed, report.to_dict()
    report.raise_if_failed()


class _PostRopeRouter:
    """Rotates Q/K before the core sees them: the classic capture bug."""

    def __init__(self, router) -> None:
        self.router = router

    def __getattr__(self, name):
        return getattr(self.router, name)

    def process(self, call: AttentionCall) -> torch.Tensor:
        call.rotate_(call.query, call.key)
        call.rotate_ = lambda q, k: None
        return self.router.process(call)


class PostRopeAdapter:
    """Wraps a correct adapter and hands the core post-RoPE Q/K."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def install(self, transformer, router):
        return self.inner.install(transformer, _PostRopeRouter(router))


def test_post_rope_capture_fails_the_position_check(case):
    broken = ConformanceCase(PostRopeAdapter(case.adapter), case.transformer, case.inputs)
    report = check_adapter(broken)
    failed = {r.name: r.message for r in report.failures()}
    assert {"capture", "position_free"} <= failed.keys() and "identity" not in failed
    assert failed["position_free"].startswith("Expected identical Q/K") and "post-RoPE" in failed["position_free"]
    with pytest.raises(ConformanceError, match="position_free"):
        report.raise_if_failed()


class _NoRopeRouter(_PostRopeRouter):
    """Hands the core a `rope()` that does nothing: the foreground score would use unrotated queries."""

    def process(self, call: AttentionCall) -> torch.Tensor:
        call.rope = lambda x: x
        return self.router.process(call)


class NoRopeAdapter(PostRopeAdapter):
    def install(self, transformer, router):
        return self.inner.install(transformer, _NoRopeRouter(router))


def test_rope_that_disagrees_with_the_attention_fails_capture(case):
    report = check_adapter(ConformanceCase(NoRopeAdapter(case.adapter), case.transformer, case.inputs))
    failed = {r.name: r.message for r in report.failures()}
    assert set(failed) == {"capture"} and "rope() vs the rotation attend() used" in failed["capture"]


def test_capture_without_projection_modules_is_not_a_silent_pass(case, monkeypatch):
    import vwarper_hooks.porting.conformance as kit

    monkeypatch.setattr(kit, "_first", lambda attn, *names: None)  # as if the projections had other names
    result = check_adapter(case, checks=("capture",)).results[0]
    assert not result.passed and "no projection module found" in result.message


class _Leaky:
    """An adapter whose uninstall forgets the first layer: cleanup and identity must notice."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def install(self, transformer, router):
        undo = self.inner.install(transformer, router)
        first = self.inner.attention_layers(transformer)[0]

        def uninstall():
            leftover = first.processor
            undo()
            first.set_processor(leftover)

        return uninstall


def test_leaky_uninstall_fails_identity_and_cleanup():
    pipe = tiny_cogvideox_pipeline(num_layers=2)
    good = case_from_pipeline(pipe)
    broken = ConformanceCase(_Leaky(good.adapter), good.transformer, good.inputs)
    try:
        failed = {r.name for r in check_adapter(broken, checks=("identity", "cleanup")).failures()}
    finally:
        first = good.adapter.attention_layers(pipe.transformer)[0]
        while hasattr(first.processor, "original"):  # unwrap what the leaky adapter left behind
            first.set_processor(first.processor.original)
    assert failed == {"identity", "cleanup"}
    assert check_adapter(good).passed


class TestCogVideoXThroughTheMixin(AdapterConformance):
    """What an adapter author writes: one method, five tests collected by pytest."""

    def conformance_case(self) -> ConformanceCase:
        if not hasattr(type(self), "_case"):
            type(self)._case = case_from_pipeline(tiny_cogvideox_pipeline(num_layers=2))
        return type(self)._case
