"""inject() leaves outputs bit-identical when it does nothing, and cleans up on every exit path."""

from __future__ import annotations

import pytest
import torch
from conftest import hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.contract import AttentionCall


def test_inject_off_and_after_exit_is_bit_identical(pipe, subject):
    stock = run(pipe)
    before = hook_count(pipe)
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)):
        assert hook_count(pipe) > before
        assert torch.equal(run(pipe), stock)
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(30, 40))) as session:
        with pytest.raises(vwarper.ConfigError, match="warp_steps"):  # a window that never fires in 2 steps
            run(pipe)
        assert not session.diagnostics
    assert hook_count(pipe) == before == 0
    assert "set_timesteps" not in vars(pipe.scheduler)  # our wrapper is gone
    assert torch.equal(run(pipe), stock)


def test_exception_inside_with_restores_pipe(pipe, subject):
    stock = run(pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 1), mask=False)):
            run(pipe)
            raise RuntimeError("boom")
    assert hook_count(pipe) == 0
    assert torch.equal(run(pipe), stock)


def test_exception_inside_pipeline_call_restores_pipe(pipe, subject):
    """A prompt without the subject token fails inside the denoising loop; nothing stays behind."""
    stock = run(pipe)
    with pytest.raises(vwarper.SubjectTokenError, match="<clock>"):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 1))):
            run(pipe, prompt="a photo of a dog on the beach")
    assert hook_count(pipe) == 0
    assert torch.equal(run(pipe), stock)


def test_second_inject_while_active_raises(pipe, subject):
    with vwarper.inject(pipe, subject):
        with pytest.raises(vwarper.InjectionActiveError):
            with vwarper.inject(pipe, subject):
                pass
    assert hook_count(pipe) == 0


class PassThrough:
    """A router that takes every layer and computes the stock result through AttentionCall."""

    def __init__(self) -> None:
        self.seen = 0

    def wants(self, layer: int) -> bool:
        return True

    def process(self, call: AttentionCall) -> torch.Tensor:
        self.seen += 1
        return call.default()


def test_processor_replica_is_bit_identical_to_stock(pipe):
    stock = run(pipe)
    adapter = vwarper.get_adapter(pipe.transformer)
    router = PassThrough()
    uninstall = adapter.install(pipe.transformer, router)
    try:
        routed = run(pipe)
    finally:
        uninstall()
    assert router.seen == 42 * 2  # every layer, 2 steps (CFG batched in one call)
    assert torch.equal(routed, stock)
    assert adapter.is_installed(pipe.transformer) == 0
