"""`inject(pipe, subject, config)`: the context manager that puts V-Warper on a pipeline.

Everything is validated before the model is touched and all problems are reported at once.
Installation goes through an ExitStack; on exit (normal or by exception) everything is removed
and the pipeline computes exactly what it computed before.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from .adapter import Adapter
from .config import WarpConfig
from .errors import ConfigError, InjectionActiveError, SubjectError, VwarperError
from .fine.session import Session
from .fine.warping import Injector
from .plugins import get_adapter, get_plugin_manager
from .subject.activate import activate_subject, fit_problems

logger = logging.getLogger(__name__)

PIPELINE_PARTS = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer")

_active: set[int] = set()  # id() of transformers with an active injection


def is_active(pipe: Any) -> bool:
    """True while an `inject` block is open on this pipeline."""
    return id(getattr(pipe, "transformer", None)) in _active


def _check_pipeline(pipe: Any) -> None:
    missing = [p for p in PIPELINE_PARTS if getattr(pipe, p, None) is None]
    if missing or not callable(pipe):
        raise VwarperError(
            f"Expected a diffusers video pipeline with {', '.join(PIPELINE_PARTS)}, but got "
            f"{type(pipe).__name__} (missing: {', '.join(missing) or 'a __call__'}). "
            "Pass the pipeline itself, e.g. CogVideoXPipeline.from_pretrained('THUDM/CogVideoX-5b')."
        )


def _make_injector(config: WarpConfig) -> tuple[Injector | None, list[str]]:
    pm = get_plugin_manager()
    injector = pm.hook.make_injector(name=config.injector, config=config)
    if injector is not None:
        return injector, []
    names = sorted({n for names in pm.hook.injector_names() for n in names})
    return None, [f"Expected WarpConfig.injector to be one of {names}, but got {config.injector!r}."]


def validate(pipe: Any, subject: Any, config: WarpConfig) -> tuple[Adapter, Injector, WarpConfig]:
    """Check everything `inject` needs; raise one error listing every problem.

    Returns the adapter, the injector and `config` with the adapter's default layers filled in.
    """
    _check_pipeline(pipe)
    if is_active(pipe):
        raise InjectionActiveError(
            "Expected no active injection on this pipeline, but an inject() block is already open. "
            "Leave it before entering another."
        )
    adapter = get_adapter(pipe.transformer)
    depth = len(adapter.attention_layers(pipe.transformer))
    # Adapters of other families may default to other layers (Adapter.default_layers).
    config = config.for_adapter(adapter, depth)
    problems = config.layer_problems(depth) + adapter.problems(pipe.transformer)
    problems += adapter.pipeline_problems(pipe) + _unsupported_modes(pipe)
    injector, injector_problems = _make_injector(config)
    problems += injector_problems
    if subject is None or not hasattr(subject, "token"):
        problems.append(f"Expected a vwarper.Subject, but got {type(subject).__name__}.")
    else:
        try:
            subject.check()
        except SubjectError as exc:
            problems.append(str(exc))
        if getattr(subject, "has_coarse", False):
            problems += fit_problems(pipe, subject)
    if problems:
        raise ConfigError(problems)
    return adapter, injector, config


def _unsupported_modes(pipe: Any) -> list[str]:
    """Modes no adapter supports yet: image-conditioned inputs, step caches."""
    problems = []
    transformer = pipe.transformer
    config = transformer.config
    channels_in, channels_out = getattr(config, "in_channels", None), getattr(config, "out_channels", None)
    if channels_in and channels_out and channels_in != channels_out:
        problems.append(
            f"Expected a text-to-video transformer (in_channels == out_channels), but got in_channels={channels_in}, "
            f"out_channels={channels_out}: an image-to-video model, whose extra conditioning channels the "
            "reference branch does not build yet. Use the text-to-video checkpoint."
        )
    if getattr(transformer, "is_cache_enabled", False):
        problems.append(
            "Expected no diffusers cache on the transformer, but one is enabled (FirstBlockCache, FasterCache, ...): "
            "the reference branch would share its cached residuals. Call transformer.disable_cache() first."
        )
    return problems


@contextmanager
def _wrap_set_timesteps(scheduler: Any, notify: Callable[[], None]) -> Iterator[None]:
    """Tell the session when the pipeline (re)sets its timesteps, i.e. when a new call begins."""
    original = scheduler.set_timesteps
    missing = object()
    before = scheduler.__dict__.get("set_timesteps", missing)  # someone else's wrapper, if any

    @functools.wraps(original)  # pipelines inspect its signature (e.g. for `sigmas`)
    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        notify()
        return original(*args, **kwargs)

    scheduler.set_timesteps = set_timesteps
    try:
        yield
    finally:
        if before is missing:
            del scheduler.set_timesteps  # the instance attribute goes; the class method shows again
        else:
            scheduler.set_timesteps = before


@contextmanager
def inject(pipe: Any, subject: Any, config: WarpConfig | None = None) -> Iterator[Session]:
    """Apply V-Warper to `pipe` for the duration of the ``with`` block; yields the `Session`.

    Example::

        with vwarper.inject(pipe, subject) as session:
            video = pipe(prompt="a <clock> clock on the beach", num_frames=25).frames[0]
    """
    config = config or WarpConfig()
    adapter, injector, config = validate(pipe, subject, config)
    transformer = pipe.transformer
    with ExitStack() as stack:
        _active.add(id(transformer))
        stack.callback(_active.discard, id(transformer))
        if subject.has_coarse:
            stack.enter_context(activate_subject(pipe, subject))
        session = Session(pipe, adapter, subject, config, injector)
        stack.callback(session.close)
        # Capture goes in after the LoRA so the processors see the LoRA-wrapped projections.
        stack.callback(adapter.install(transformer, session))
        stack.callback(transformer.register_forward_pre_hook(session.before_forward, with_kwargs=True).remove)
        stack.callback(
            transformer.register_forward_hook(session.after_forward, with_kwargs=True, always_call=True).remove
        )
        stack.callback(pipe.text_encoder.register_forward_pre_hook(session.on_text_encoder, with_kwargs=True).remove)
        stack.enter_context(_wrap_set_timesteps(pipe.scheduler, session.on_set_timesteps))
        logger.info("V-Warper active on %s (%s)", type(transformer).__name__, adapter.name)
        yield session
