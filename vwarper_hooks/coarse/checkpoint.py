"""Resumable stage-1 checkpoints: one safetensors file per part plus ``state.json``, and a pointer.

``checkpoint_dir/step-XXXXXXXX/`` is written atomically, then ``latest.json`` is switched to it
(also atomically) and older step folders are removed. Only safetensors and JSON are read back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import SubjectIntegrityError
from ..files import atomic_directory, atomic_file, read_safetensors

CHECKPOINT_POINTER = "latest.json"


def save_checkpoint(directory: Path, step: int, parts: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
    """Write ``step-XXXXXXXX/`` (one safetensors file per part + state.json) and point latest.json at it."""
    name = f"step-{step:08d}"
    with atomic_directory(directory / name, overwrite=True) as tmp:
        for part, tensors in parts.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / f"{part}.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    with atomic_file(directory / CHECKPOINT_POINTER) as partial:
        partial.write_text(json.dumps({"step": step, "dir": name}))
    for old in directory.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return directory / name


def load_checkpoint(directory: Path, parts: tuple[str, ...]) -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
    """The latest checkpoint in `directory` as (parts, state), or None when there is none."""
    pointer = directory / CHECKPOINT_POINTER
    if not pointer.is_file():
        return None
    try:
        where = directory / json.loads(pointer.read_text())["dir"]
        state = json.loads((where / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise TypeError(f"state.json holds no integer 'step' ({type(state).__name__})")
        blobs = {part: (where / f"{part}.safetensors").read_bytes() for part in parts}
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise SubjectIntegrityError(
            f"Expected a readable checkpoint in {directory}, but got: {exc}. Delete the directory or resume=False."
        ) from None
    loaded = {part: read_safetensors(blob, f"{where.name}/{part}") for part, blob in blobs.items()}
    return loaded, state


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a checkpoint pointer (a run `resume=True` would continue)."""
    return (Path(directory) / CHECKPOINT_POINTER).is_file()
