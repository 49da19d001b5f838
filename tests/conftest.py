"""Shared fixtures: tiny random pipelines and helpers to compare outputs and count hooks."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "images"


def _entry_points_here() -> dict[str, str]:
    """The ``vwarper_hooks`` entry points this checkout's pyproject.toml declares (name -> module)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the installed entry points only
        return {}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project.get("entry-points", {}).get("vwarper_hooks", {}))


def _test_this_checkout() -> None:
    """Test this checkout's adapters also where the installed package is another checkout's (a second
    work tree run with ``PYTHONPATH=.``): ``vwarper_adapters`` is this tree's ``adapters/``, and entry
    points this pyproject.toml declares but the installed metadata lacks (a family added here) are
    registered after the installed ones. Where the install is this checkout (CI), nothing changes."""
    found = importlib.util.find_spec("vwarper_adapters")
    here = ROOT / "adapters"
    if found is None or [Path(p) for p in found.submodule_search_locations or []] != [here]:
        spec = importlib.util.spec_from_file_location(
            "vwarper_adapters", here / "__init__.py", submodule_search_locations=[str(here)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["vwarper_adapters"] = module
        spec.loader.exec_module(module)
    from vwarper_hooks import plugins

    installed = plugins._new_manager
    if getattr(installed, "with_this_checkout", False):
        return

    def new_manager():
        pm = installed()
        for name, module in _entry_points_here().items():
            if pm.get_plugin(name) is None and not pm.is_blocked(name):
                pm.register(importlib.import_module(module), name=name)
        pm.check_pending()
        return pm

    new_manager.with_this_checkout = True
    plugins._new_manager = new_manager


_test_this_checkout()

import vwarper_hooks as vwarper  # noqa: E402
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test parametrized with a family whose model the installed diffusers lacks is skipped, saying why
    (e.g. HunyuanVideo 1.5, new in diffusers 0.36, at the declared floor 0.35)."""
    from vwarper_hooks.porting.families import TINY_FAMILIES, unavailable

    reasons = {family: unavailable(family) for family in TINY_FAMILIES}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        missing = [reasons[v] for v in params.values() if isinstance(v, str) and reasons.get(v)]
        if missing:
            item.add_marker(pytest.mark.skip(reason=missing[0]))


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
