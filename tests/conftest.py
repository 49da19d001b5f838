"""Shared fixtures: tiny random pipelines and helpers to compare outputs and count hooks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on shared 2-core runners the thread
    pool contends with itself (a 75 s suite took 14 min). One thread keeps timings stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    return tiny_cogvideox_pipeline()


@pytest.fixture(scope="module")
def clock_image() -> Image.Image:
    return Image.open(DATA / "clock" / "00.jpg").convert("RGB")


@pytest.fixture()
def subject(clock_image) -> vwarper.Subject:
    return vwarper.Subject.from_images([clock_image], token="<clock>", class_word="clock")


def run(pipe, **overrides) -> torch.Tensor:
    """One deterministic tiny call; returns the decoded frames tensor."""
    return pipe(**tiny_call_kwargs(**overrides)).frames


def generate(pipe, subject, config, steps: int = 5, **overrides) -> tuple[torch.Tensor, vwarper.Session]:
    """One tiny call of `steps` steps inside `inject`; returns (frames, the session)."""
    with vwarper.inject(pipe, subject, config) as session:
        frames = run(pipe, num_inference_steps=steps, **overrides)
    return frames, session


def hook_count(pipe) -> int:
    """Forward hooks on every module of the transformer and text encoder, plus our processors."""
    n = 0
    for model in (pipe.transformer, pipe.text_encoder, pipe.vae):
        for m in model.modules():
            n += len(m._forward_pre_hooks) + len(m._forward_hooks)
    return n + vwarper.get_adapter(pipe.transformer).is_installed(pipe.transformer)
