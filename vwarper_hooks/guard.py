"""Everything `inject` checks before it touches the pipeline, reported at once in one `ConfigError`.

Also the registry of open injections (`is_active`): a pipeline takes one `inject` at a time, and
`train_subject` refuses a pipeline with an open one.
"""

from __future__ import annotations

import logging
from typing import Any

from .adapter import Adapter, base_model
from .config import WarpConfig
from .errors import ConfigError, InjectionActiveError, SubjectError, VwarperError
from .files import config_hash, model_config
from .model_hooks import hook_problems
from .plugins import get_adapter, make_parts
from .subject.activate import fit_problems

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
    problems += adapter.problems(model) + adapter.pipeline_problems(pipe) + unsupported_modes(pipe, adapter)
    for subject in subjects:
        problems += subject_problems(pipe, subject, allow_config_mismatch)
    if problems:
        raise ConfigError(problems)
    return adapter, config, matcher, injector


def config_problems(
    adapter: Adapter, model: Any, subjects: list[Any], config: WarpConfig
) -> tuple[WarpConfig, Any, Any, list[str]]:
    """Every problem of `config` with this model and these subjects: layers, matcher and injector, several
    subjects or photos, reference photos. The one path `inject` (`validate`) and `Session.override` take.

    Returns `config` with the adapter's default layers filled in, the matcher, the injector and the problems.
    """
    depth = len(adapter.attention_layers(model))
    config = config.for_adapter(adapter, depth)  # other families may default to other layers
    matcher, injector, part_problems = make_parts(config)
    problems = config.layer_problems(depth) + part_problems + several_problems(subjects, config)
    for subject in subjects:
        problems += reference_problems(subject, config, matcher)
    return config, matcher, injector, problems


def several_problems(subjects: list[Any], config: WarpConfig) -> list[str]:
    """Several subjects, or several photos per subject: distinct tokens, and an injector that reads a union."""
    if not subjects:
        return ["Expected at least one vwarper.Subject, but got none. Pass a Subject or a list of them."]
    tokens = [getattr(s, "token", None) for s in subjects]
    problems = []
    repeated = sorted({t for t in tokens if t is not None and tokens.count(t) > 1})
    if repeated:
        problems.append(f"Expected a different token per subject, but got {repeated} more than once. "
                        "Train (or rename) the subjects with distinct tokens.")
    union = len(subjects) > 1 or config.num_references != 1
    if union and config.injector != "value_warp" and config.warp:
        problems.append(f"Expected injector='value_warp' with several subjects or reference photos, but got "
                        f"{config.injector!r}: the B.2 baselines read one reference. Use one subject and photo.")
    return problems


def subject_problems(pipe: Any, subject: Any, allow_config_mismatch: bool = False) -> list[str]:
    if subject is None or not hasattr(subject, "token"):
        return [f"Expected a vwarper.Subject, but got {type(subject).__name__}."]
    try:
        subject.check()
    except SubjectError as exc:
        return [str(exc)]
    return subject_fit_problems(pipe, subject, allow_config_mismatch) if subject.has_coarse else []


def subject_fit_problems(pipe: Any, subject: Any, allow_config_mismatch: bool = False, warn: bool = True) -> list[str]:
    """Every reason `subject`'s coarse stage does not fit `pipe`: trained for another transformer config
    (with `allow_config_mismatch` only a warning, unless not `warn`: a caller whose `inject` follows), or
    LoRA / token shapes that do not fit. One check for `inject`, `Subject.load(..., pipe=...)` and
    ``vwarper generate``."""
    mismatch = config_mismatch(pipe, subject)
    problems = []
    if mismatch and allow_config_mismatch and warn:
        logger.warning("%s Used anyway: allow_config_mismatch=True.", mismatch.split(" Do ")[0])
    elif mismatch and not allow_config_mismatch:
        problems.append(mismatch)
    return problems + fit_problems(pipe, subject)


def config_mismatch(pipe: Any, subject: Any) -> str | None:
    """Why `subject` was trained for another transformer config than `pipe`'s (None: the same, or unknown).

    Subjects record the config itself (``transformer_config``): then the keys both configs have are
    compared (a key only one side has is a default a newer diffusers added, not another model) and the
    differing ones are named. Older subjects record only its hash.
    """
    model = base_model(pipe.transformer)
    info = getattr(subject, "info", None) or {}
    recorded, here = info.get("transformer_config_hash"), config_hash(model)
    if not recorded or recorded == here:
        return None
    theirs, ours = info.get("transformer_config"), model_config(model)
    if isinstance(theirs, dict):
        keys = sorted(k for k in set(theirs) & set(ours) if theirs[k] != ours[k])
        if not keys:
            return None
        listed = "; ".join(f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in keys[:6])
        differ = f"{listed}{f' and {len(keys) - 6} more' if len(keys) > 6 else ''}"
    else:
        differ = "the subject predates recorded configs, so only their hashes can be compared"
    return (
        f"Expected a subject trained for this {type(model).__name__} (config sha256 {here[:12]}), but got one "
        f"trained for another config (sha256 {recorded[:12]}, {info.get('transformer_class')}, base model "
        f"{info.get('base_model')}): {differ}. Do load the base model it was trained for, or train it for this "
        "one; allow_config_mismatch=True uses it anyway (at your own risk)."
    )


def reference_problems(subject: Any, config: WarpConfig, matcher: Any) -> list[str]:
    """Whether `config.reference_image` names a photo the subject has, and "best" a matcher that scores."""
    choice, images = config.reference_image, getattr(subject, "images", None) or []
    if choice == "best":
        if matcher is not None and not callable(getattr(matcher, "score", None)):
            return [f"Expected a matcher with a score() for reference_image='best', but {config.matcher!r} has none. "
                    "Pass a photo index instead."]
        return []
    count, wanted = len(images), config.num_references
    if not count:
        return []
    if choice >= count:
        return [f"Expected reference_image below {count} (the subject has {count} photos), but got "
                f"{choice}. Pass an index from 0 to {count - 1}, or 'best'."]
    if wanted is not None and choice + min(wanted, count) > count:  # None: every photo, whatever the index
        return [f"Expected at most {count - choice} photos from reference_image={choice} on (the subject has "
                f"{count}), but got num_references={wanted}. Pass num_references={count - choice} or a lower "
                "reference_image."]
    return []


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
    problems += hook_problems(transformer)  # step caches anywhere in the model, context parallelism
    return problems
