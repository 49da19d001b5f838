"""The layout's promises: the library never loads its apps or kits, and the 0.1 module paths
still import (with a DeprecationWarning) for one release."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_the_library_loads_neither_apps_nor_porting():
    code = (
        "import sys, vwarper_hooks\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('vwarper_hooks.apps', 'vwarper_hooks.porting')))\n"
        "print(bad)\n"
    )
    done = _fresh(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli_help_and_argument_errors_answer_before_diffusers_loads():
    """Why the CLI imports its commands' heavy modules inside them: `--help` and a bad argument are instant."""
    code = (
        "import sys\n"
        "from vwarper_hooks.apps.cli import main\n"
        "for argv in (['--help'], ['generate', '--steps', 'x']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('LOADED', 'diffusers' in sys.modules)\n"
    )
    done = _fresh(code)
    assert done.returncode == 0, done.stderr
    assert "LOADED False" in done.stdout


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("vwarper_hooks.inspection", "vwarper_hooks.porting.inspection", "inspect_model"),
        ("vwarper_hooks.registry", "vwarper_hooks.plugins", "get_adapter"),
        ("vwarper_hooks.cli.commands", "vwarper_hooks.apps.cli.commands", "run_train"),
        ("vwarper_hooks.coarse.token", "vwarper_hooks.subject.token", "subject_token"),
    ],
)
def test_moved_module_paths_still_import_with_a_warning(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # the very module, not a copy
    assert callable(getattr(module, name))


def test_a_split_module_finds_names_in_each_new_home():
    import importlib

    from vwarper_hooks.fine.cycle import cycle_mask
    from vwarper_hooks.fine.foreground import ForegroundAccumulator

    sys.modules.pop("vwarper_hooks.masks", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        masks = importlib.import_module("vwarper_hooks.masks")
    assert masks.cycle_mask is cycle_mask and masks.ForegroundAccumulator is ForegroundAccumulator
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        masks.nope  # noqa: B018


def test_old_benchmark_runner_path_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-m", "vwarper_hooks.benchmark_runner", "--help"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "--spec" in done.stdout
    assert "vwarper_hooks.apps.benchmark" in done.stderr  # the deprecation warning names the new path


def test_unknown_paths_are_not_served():
    with pytest.raises(ModuleNotFoundError):
        __import__("vwarper_hooks.no_such_module")
