"""`RoutedProcessor`: stock processor unless wanted, and diffusers' kwarg filter sees `routed`'s names."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import vwarper_hooks as vwarper
from vwarper_hooks.contract.processors import RoutedProcessor
from vwarper_hooks.porting.families import TINY_FAMILIES
from vwarper_hooks.testing import case_from_pipeline, tiny_pipeline


class _Router:
    def __init__(self, wants: bool) -> None:
        self._wants = wants

    def wants(self, layer: int) -> bool:
        return self._wants


class _Original:
    """Stands in for a stock processor: records what it was called with."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple, dict]] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        self.seen.append(((hidden_states, encoder_hidden_states), {"attention_mask": attention_mask,
                                                                    "image_rotary_emb": image_rotary_emb}))
        return hidden_states


class _Probe(RoutedProcessor):
    def routed(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        self.got = image_rotary_emb
        return hidden_states + 1


@pytest.mark.parametrize("wants", [True, False])
def test_rotary_kwarg_survives_diffusers_attention_forward(wants):
    """diffusers' Attention.forward drops kwargs the processor's __call__ does not name: ours names routed's."""
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    original = _Original()
    probe = _Probe(original, 3, _Router(wants))
    attn.set_processor(probe)
    assert "image_rotary_emb" in inspect.signature(probe.__call__).parameters
    x, rope = torch.zeros(1, 4, 8), (torch.ones(4, 4), torch.zeros(4, 4))
    out = attn(x, encoder_hidden_states=None, image_rotary_emb=rope)
    if wants:
        assert probe.got is rope and torch.equal(out, x + 1) and not original.seen
    else:  # the original gets the arguments exactly as the processor received them
        assert out is x and original.seen[0][1]["image_rotary_emb"] is rope


def test_a_subclass_writing_its_own_call_keeps_it():
    class Own(RoutedProcessor):
        def routed(self, attn, hidden_states):
            return hidden_states

        def __call__(self, attn, hidden_states, extra=None):
            return "own"

    assert Own(None, 0, _Router(True))(None, 1) == "own"
    assert list(inspect.signature(Own.__call__).parameters) == ["self", "attn", "hidden_states", "extra"]


def test_stock_processor_is_called_unchanged_when_not_wanted():
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    stock = AttnProcessor2_0()
    x = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(0))
    before = attn(x)
    attn.set_processor(_Probe(stock, 0, _Router(False)))
    assert torch.equal(attn(x), before)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_builtin_processors_name_the_rotary_argument(family):
    pipe = tiny_pipeline(family, **({"num_layers": 2} if family == "cogvideox" else {}))
    adapter = vwarper.get_adapter(pipe.transformer)
    undo = adapter.install(pipe.transformer, _Router(False))
    try:
        for attn in adapter.attention_layers(pipe.transformer):
            params = inspect.signature(attn.processor.__call__).parameters
            assert {"image_rotary_emb", "rotary_emb"} & set(params), type(attn.processor).__name__
    finally:
        undo()


class _Everything:
    """Routes every layer and computes the stock result through the call (`AttentionCall.default`)."""

    def wants(self, layer: int) -> bool:
        return True

    def process(self, call):
        return call.default()


@pytest.fixture()
def backend_restored():
    """`set_attention_backend` also sets diffusers' process-wide active backend (>= 0.36): put it back."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry as registry

    before = registry._active_backend
    yield
    registry._active_backend = before


def test_cogvideox_routed_attention_follows_set_attention_backend(monkeypatch, backend_restored):
    """Stock CogVideoX calls SDPA itself; ours goes through diffusers' dispatch with the backend the user set."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    import vwarper_hooks.contract.joint_attention as joint

    pipe = tiny_pipeline("cogvideox", num_layers=2)
    case = case_from_pipeline(pipe)
    stock = case.forward()
    seen, dispatch = [], joint._dispatch_attention_fn()

    def spy(*args, backend=None, **kwargs):
        seen.append(backend)
        return dispatch(*args, backend=backend, **kwargs)

    monkeypatch.setattr(joint, "_dispatch_attention_fn", lambda: spy)
    adapter = vwarper.get_adapter(pipe.transformer)
    undo = adapter.install(pipe.transformer, _Everything())
    try:
        assert torch.equal(case.forward(), stock) and seen == [None, None]  # no backend set: the default, bit for bit
        pipe.transformer.set_attention_backend("native")
        assert torch.equal(case.forward(), stock) and seen[2:] == [AttentionBackendName.NATIVE] * 2
        pipe.transformer.set_attention_backend("_native_math")
        math = case.forward()
        assert seen[4:] == [AttentionBackendName._NATIVE_MATH] * 2
        assert torch.allclose(math, stock, atol=1e-5, rtol=1e-4)  # the math kernel: same attention, other rounding
    finally:
        undo()


def test_a_backend_set_during_an_injection_stays_on_the_stock_processor(backend_restored):
    pipe = tiny_pipeline("wan")
    adapter = vwarper.get_adapter(pipe.transformer)
    first = adapter.attention_layers(pipe.transformer)[0]
    stock = first.processor
    undo = adapter.install(pipe.transformer, _Router(False))
    try:
        pipe.transformer.set_attention_backend("_native_math")
        assert first.processor is not stock and first.processor._attention_backend == "_native_math"
    finally:
        undo()
    assert first.processor is stock and stock._attention_backend == "_native_math"
