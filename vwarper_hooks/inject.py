"""`inject(pipe, subject, config)`: the context manager that puts V-Warper on a pipeline.

Everything is validated first (`guard`) and all problems are reported at once. Installation goes
through one ExitStack, in this order: the subject's coarse stage (LoRA + token), the step clock on
the scheduler, the tokenizer watch, the attention processors (after the LoRA, so they see the
LoRA-wrapped projections) and the transformer hooks. On exit, normal or by exception, everything
comes off in reverse order and the pipeline computes exactly what it computed before. A
``torch.compile``d transformer works: the processors and LoRA go on the model inside, the hooks on
the compiled wrapper (README, "torch.compile").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from .config import WarpConfig, as_config
from .contract.adapter import base_model
from .contract.experts import experts
from .errors import VwarperError
from .fine.calls import one_call_at_a_time
from .fine.session import Session
from .fine.tokens import watch_tokenizer
from .guard import is_active, mark_active, mark_inactive, validate
from .subject.activate import activate_subject

__all__ = ["Injection", "inject", "is_active"]

logger = logging.getLogger(__name__)


def inject(
    pipe: Any, subject: Any, config: WarpConfig | dict[str, Any] | None = None, *, allow_config_mismatch: bool = False
) -> Injection:
    """Apply V-Warper to `pipe` for the duration of the ``with`` block; yields the `Session`. One ``with``
    block per call (`Injection`); inside it, one pipeline call at a time (`fine.calls`).

    :param subject: a `Subject`, or a list of them: every subject's coarse stage is active at once and
        each gets its own reference branch, foreground mask and flows (README, "Several subjects").
    :param config: a `WarpConfig`, or a dict of its fields (``WarpConfig(**config)``); None: the defaults.

    A subject trained for another transformer config is refused (`ConfigError` naming both configs);
    ``allow_config_mismatch=True`` only warns (its LoRA and token must still fit the model's shapes).

    Example::

        with vwarper.inject(pipe, subject) as session:
            video = pipe(prompt="a <clock> clock on the beach", num_frames=25).frames[0]
    """
    return Injection(_injected(pipe, subject, config, allow_config_mismatch))


class Injection(AbstractContextManager):
    """What `inject(...)` returns: the context manager of one ``with`` block. Entering it again (also
    after a refusal) raises `VwarperError`: call `inject` again for another block."""

    def __init__(self, block: AbstractContextManager[Session]) -> None:
        self._block, self._used = block, False

    def __enter__(self) -> Session:
        if self._used:
            raise VwarperError(
                "Expected a fresh inject(...) for each with block, but this one was already entered. Do call "
                "vwarper.inject(pipe, subject) again for the next block."
            )
        self._used = True
        return self._block.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self._block.__exit__(*exc)


@contextmanager
def _injected(pipe: Any, subject: Any, config: Any, allow_config_mismatch: bool) -> Iterator[Session]:
    """The ``with`` block of `inject`: validate, install everything through one ExitStack, take it off."""
    subjects = list(subject) if isinstance(subject, list | tuple) else [subject]
    adapter, config, matcher, injector = validate(pipe, subjects, as_config(config), allow_config_mismatch)
    transformer = pipe.transformer
    with ExitStack() as stack:
        mark_active(pipe)
        stack.callback(mark_inactive, pipe)
        stack.enter_context(one_call_at_a_time(pipe))  # a second thread's pipe(...) is refused at once
        for each in subjects:
            if each.has_coarse:
                stack.enter_context(activate_subject(pipe, each, checked=True))  # validate checked its fit
        session = Session(pipe, adapter, subjects, config, matcher, injector)
        stack.callback(session.close)
        stack.enter_context(session.clock.installed())
        stack.enter_context(watch_tokenizer(pipe, session.on_tokenized))
        for expert in experts(adapter, pipe):  # one transformer, or Wan 2.2's two experts: one router
            stack.callback(adapter.install(base_model(expert), session.router))
            stack.callback(expert.register_forward_pre_hook(session.before_forward, with_kwargs=True).remove)
            stack.callback(
                expert.register_forward_hook(session.after_forward, with_kwargs=True, always_call=True).remove
            )
        logger.info("V-Warper active on %s (%s)", type(transformer).__name__, adapter.name)
        yield session
