"""Resumable stage-1 checkpoints: one safetensors file per part plus ``state.json``, and a pointer.

``checkpoint_dir/step-XXXXXXXX/`` is written atomically, then ``latest.json`` is switched to it
(also atomically) and older step folders are removed. Only safetensors and JSON are read back.
`resume_into` loads the latest one into a live run (LoRA, token row, optimizer, RNG, grad scaler).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import SubjectError, SubjectIntegrityError
from ..files import atomic_directory, atomic_file, read_safetensors

logger = logging.getLogger(__name__)

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


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors ``"<param index>.<key>"`` (for safetensors, never pickle)."""
    flat = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            flat[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


def restore_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Put `flatten_optimizer`'s tensors back into `optimizer`."""
    full = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    full["state"] = state
    optimizer.load_state_dict(full)


def resume_into(
    config: Any, fingerprint: dict, named: list[tuple[str, nn.Parameter]], row: nn.Parameter,
    optimizer: torch.optim.Optimizer, generator: torch.Generator, accelerator: Any,
) -> tuple[int, list[float]]:
    """Load the latest checkpoint of ``config.checkpoint_dir`` into the live objects; returns (completed
    steps, losses so far), (0, []) without a checkpoint. Refuses another run's checkpoint."""
    found = load_checkpoint(Path(config.checkpoint_dir), ("trainable", "optimizer", "rng"))
    if found is None:
        logger.info("no checkpoint in %s; starting from step 0", config.checkpoint_dir)
        return 0, []
    parts, state = found
    if state["step"] > config.steps:
        raise SubjectError(
            f"Expected steps >= the checkpoint's {state['step']} completed steps, but got steps={config.steps}. "
            f"Raise steps to at least {state['step']}."
        )
    if state.get("fingerprint") != fingerprint:
        raise SubjectIntegrityError(
            f"Expected a checkpoint of this very run (same images, token, model and settings), but got one "
            f"of another run in {config.checkpoint_dir}. Use another checkpoint_dir, or resume=False."
        )
    trainable = parts["trainable"]
    if set(trainable) != {n for n, _ in named} | {"token_row"}:
        raise SubjectIntegrityError(f"Expected the checkpoint to hold this run's LoRA, but its keys differ. "
                                    f"Delete {config.checkpoint_dir} or resume=False.")
    with torch.no_grad():
        for name, param in named:
            param.copy_(trainable[name])
        row.copy_(trainable["token_row"])
    restore_optimizer(optimizer, parts["optimizer"])
    generator.set_state(parts["rng"]["generator"])
    if state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    logger.info("resumed from step %d in %s", state["step"], config.checkpoint_dir)
    return int(state["step"]), [float(x) for x in state.get("losses", [])]
