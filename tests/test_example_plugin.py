"""The third-party example plugin installs as its own package, is discovered by entry point, and conforms."""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vwarper_hooks as vwarper
from vwarper_hooks import plugins
from vwarper_hooks.porting.conformance import ConformanceCase, check_adapter

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_adapter_plugin"
DIST = "vwarper-toy-adapter"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def toy_installed(tmp_path_factory):
    """pip-install a copy of the example (offline, no build isolation), then a fresh plugin manager."""
    src = tmp_path_factory.mktemp("toy") / "toy_adapter_plugin"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src))
    assert done.returncode == 0, done.stderr[-2000:]
    importlib.invalidate_caches()
    plugins._pm = None  # the next get_plugin_manager() loads entry points again
    plugins._invalidate_caches()
    try:
        yield
    finally:
        _pip("uninstall", "-y", "-q", DIST)
        importlib.invalidate_caches()
        for name in [m for m in sys.modules if m == "vwarper_toy" or m.startswith("vwarper_toy.")]:
            del sys.modules[name]
        plugins._pm = None
        plugins._invalidate_caches()


def test_entry_point_is_declared_by_the_installed_distribution(toy_installed):
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="vwarper_hooks")}
    assert eps["toy_joint"].value == "vwarper_toy.plugin"
    assert eps["toy_joint"].dist.name == DIST


def test_plugin_is_discovered_next_to_the_builtins(toy_installed):
    from vwarper_toy.model import ToyJointTransformer

    assert {"cogvideox", "hunyuan_video", "wan", "toy_joint"} <= set(vwarper.list_adapters())
    assert plugins.adapter_sources()["toy_joint"] == "toy_joint"
    assert vwarper.get_adapter(ToyJointTransformer()).name == "toy_joint"


def test_plugin_passes_the_conformance_kit(toy_installed):
    from vwarper_toy.model import ToyJointTransformer, toy_inputs

    torch.manual_seed(0)
    model = ToyJointTransformer().eval()
    report = check_adapter(ConformanceCase(vwarper.get_adapter(model), model, toy_inputs(model)))
    assert report.passed, report.to_dict()
