"""Everything `inject` checks before it touches the pipeline, reported at once in one `ConfigError`.

Also the registry of open injections (`is_active`): a pipeline takes one `inject` at a time, and
`train_subject` refuses a pipeline with an open one.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import WarpConfig
from .contract.adapter import Adapter, base_model
from .contract.experts import experts
from .contract.sharding import TokenShards, sharding_problems
from .errors import ConfigError, InjectionActiveError, SubjectError, VwarperError
from .fine.config_check import config_problems
from .model_hooks import hook_problems
from .plugins import get_adapter
from .subject.activate import subject_fit_problems

logger = logging.getLogger(__name__)

PIPELINE_PARTS = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer")

_active: set[int] = set()  # id() of transformers with an active injection


def is_active(pipe: Any) -> bool:
    """True while an `inject` block is open on this pipeline."""
    return id(getattr(pipe, "transformer", None)) in _active


def mark_active(pipe: Any) -> None:
    _active.add(id(pipe.transformer))


def mark_inactive(pipe: Any) -> None:
    _active.discard(id(pipe.transformer))


def check_pipeline(pipe: Any) -> None:
    missing = [p for p in PIPELINE_PARTS if getattr(pipe, p, None) is None]
    if missing or not callable(pipe):
        raise VwarperError(
            f"Expected a diffusers video pipeline with {', '.join(PIPELINE_PARTS)}, but got "
            f"{type(pipe).__name__} (missing: {', '.join(missing) or 'a __call__'}). "
            "Pass the pipeline itself, e.g. CogVideoXPipeline.from_pretrained('THUDM/CogVideoX-5b')."
        )


def validate(
    pipe: Any, subjects: list[Any], config: WarpConfig, allow_config_mismatch: bool = False
) -> tuple[Adapter, WarpConfig, Any, Any]:
    """Check everything `inject` needs for `subjects` (one or several); raise one error listing every problem.

    Returns the adapter, `config` with the adapter's default layers filled in, the matcher and the
    injector (both made through their plugin hooks).
    """
    check_pipeline(pipe)
    if is_active(pipe):
        raise InjectionActiveError(
            "Expected no active injection on this pipeline, but an inject() block is already open. "
            "Leave it before entering another."
        )
    adapter = get_adapter(pipe.transformer)
    model = base_model(pipe.transformer)
    config, matcher, injector, problems = config_problems(adapter, model, subjects, config)
    problems += adapter.pipeline_problems(pipe) + unsupported_modes(pipe, adapter)
    for expert in experts(adapter, pipe):  # Wan 2.2: both experts carry our processors and hooks
        problems += adapter.problems(base_model(expert))
        if expert is not pipe.transformer:  # the first one's hooks: `unsupported_modes`
            problems += hook_problems(base_model(expert), adapter.context_parallel)
        problems += parallel_problems(adapter, base_model(expert))
    for subject in subjects:
        problems += subject_problems(pipe, subject, allow_config_mismatch)
    if problems:
        raise ConfigError(problems)
    return adapter, config, matcher, injector


def subject_problems(pipe: Any, subject: Any, allow_config_mismatch: bool = False) -> list[str]:
    if subject is None or not hasattr(subject, "token"):
        return [f"Expected a vwarper.Subject, but got {type(subject).__name__}."]
    try:
        subject.check()
    except SubjectError as exc:
        return [str(exc)]
    return subject_fit_problems(pipe, subject, allow_config_mismatch) if subject.has_coarse else []


def unsupported_modes(pipe: Any, adapter: Any = None) -> list[str]:
    """Modes no family supports yet: image-conditioned inputs (extra input channels, unless the adapter builds
    them: `Adapter.conditioning_channels`), step caches, context parallelism."""
    problems = []
    transformer = base_model(pipe.transformer)
    config = transformer.config
    channels_in, channels_out = getattr(config, "in_channels", None), getattr(config, "out_channels", None)
    if channels_in and channels_out and channels_in != channels_out and not getattr(adapter, "conditioning_channels",
                                                                                    False):
        problems.append(
            f"Expected a text-to-video transformer (in_channels == out_channels), but got in_channels={channels_in}, "
            f"out_channels={channels_out}: an image-to-video model, whose extra conditioning channels the "
            "reference branch does not build yet. Use the text-to-video checkpoint."
        )
    # step caches anywhere in the model, context parallelism
    problems += hook_problems(transformer, getattr(adapter, "context_parallel", False))
    return problems


def parallel_problems(adapter: Any, model: Any) -> list[str]:
    """Under context parallelism: heads the ranks can share out whole (`contract.sharding`)."""
    shards = TokenShards.of_model(model) if adapter.context_parallel else None
    if shards is None:
        return []
    return sharding_problems(shards, heads=adapter.attention_layers(model)[0].heads)
