"""What a run must satisfy before V-Warper touches it, and the one check after it: a batch the method
understands, every subject token in the prompt (for the foreground mask), and a finite last prediction."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..config import WarpConfig
from ..contract.adapter import Adapter
from ..contract.sharding import TokenShards, sharding_problems
from ..errors import ConfigError, SubjectTokenError, VwarperError
from ..model_hooks import hook_problems


def batched_cfg(pipe: Any, adapter: Adapter) -> bool:
    """Whether a batch of 2 is an [unconditional, conditional] pair (not two prompts)."""
    if not adapter.cfg_in_one_batch:
        return False  # this family runs CFG as separate passes: a batch of 2 is two prompts
    guidance = getattr(pipe, "_guidance_scale", None)  # set by the pipeline's __call__
    return guidance is None or float(guidance) > 1.0


def check_run(pipe: Any, adapter: Adapter, config: WarpConfig, branches: list[Any], latents: torch.Tensor,
              shards: TokenShards | None = None) -> None:
    """Refuse a run V-Warper cannot follow: several videos per call, (with masks) a subject whose token the
    prompt lacks, or video tokens the context-parallel ranks cannot share out evenly. `branches` are the
    session's `SubjectBranch` objects; `latents` the generation's."""
    batch = latents.shape[0]
    if shards is not None:
        grid = adapter.token_grid(pipe.transformer, latents)
        problems = sharding_problems(shards, tokens=grid[0] * grid[1] * grid[2])
        if problems:
            raise ConfigError(problems)
    if batch not in (1, 2) or (batch == 2 and not batched_cfg(pipe, adapter)):
        raise VwarperError(
            f"Expected one video per call (batch 1, or 2 with CFG), but got a batch of {batch}. "
            "Use num_videos_per_prompt=1 and one prompt with inject()."
        )
    for branch in branches:
        if config.mask and branch.positions is None:
            subject = branch.subject
            where = "only in the negative prompt" if branch.tokens.elsewhere() else "not in the prompt"
            raise SubjectTokenError(
                f"Expected the prompt to contain the subject token {subject.token!r}, but it is {where} "
                "(or prompt_embeds were passed, which hide it). The foreground mask needs it. Write it in "
                f"the prompt, e.g. 'a {subject.token} {subject.class_word} on the beach', or use "
                "WarpConfig(mask=False)."
            )


def check_models(models: list[Any], adapter: Adapter) -> None:
    """Refuse step caches on the transformer(s), and context parallelism where the adapter does not run
    under it (checked at each run: a cache can be enabled inside the ``with`` block)."""
    problems = [p for m in models for p in hook_problems(m, adapter.context_parallel)]
    if problems:
        raise ConfigError(problems)


def warn_if_not_finite(output: Any) -> None:
    """After the loop's last transformer call (one host read per call): a non-finite prediction is
    never silent."""
    first = output[0] if isinstance(output, tuple | list) else getattr(output, "sample", output)
    if torch.is_tensor(first) and first.device.type != "meta" and not bool(torch.isfinite(first).all()):
        warnings.warn(
            "The last denoising step's prediction under V-Warper is not finite (NaN or inf): the video will be "
            "blank. Check that it is finite without inject(); if it is, try WarpConfig(reference_lockstep=False) "
            "(memory hooks), a float32 or bfloat16 transformer, or the subject's LoRA (lora.alpha in "
            "subject.json).",
            RuntimeWarning,
            stacklevel=3,
        )
