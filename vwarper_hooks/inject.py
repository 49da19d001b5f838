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
from contextlib import ExitStack, contextmanager
from typing import Any

from .adapter import base_model
from .config import WarpConfig, as_config
from .fine.session import Session
from .fine.tokens import watch_tokenizer
from .guard import is_active, mark_active, mark_inactive, validate
from .subject.activate import activate_subject

__all__ = ["inject", "is_active"]

logger = logging.getLogger(__name__)


@contextmanager
def inject(
    pipe: Any, subject: Any, config: WarpConfig | dict[str, Any] | None = None, *, allow_config_mismatch: bool = False
) -> Iterator[Session]:
    """Apply V-Warper to `pipe` for the duration of the ``with`` block; yields the `Session`.

    :param subject: a `Subject`, or a list of them: every subject's coarse stage is active at once and
        each gets its own reference branch, foreground mask and flows (README, "Several subjects").

    :param config: a `WarpConfig`, or a dict of its fields (``WarpConfig(**config)``); None: the defaults.

    A subject trained for another transformer config is refused (`ConfigError` naming both configs);
    ``allow_config_mismatch=True`` only warns (its LoRA and token must still fit the model's shapes).

    Example::

        with vwarper.inject(pipe, subject) as session:
            video = pipe(prompt="a <clock> clock on the beach", num_frames=25).frames[0]
    """
    subjects = list(subject) if isinstance(subject, list | tuple) else [subject]
    adapter, config, matcher, injector = validate(pipe, subjects, as_config(config), allow_config_mismatch)
    transformer = pipe.transformer
    with ExitStack() as stack:
        mark_active(pipe)
        stack.callback(mark_inactive, pipe)
        for each in subjects:
            if each.has_coarse:
                stack.enter_context(activate_subject(pipe, each, checked=True))  # validate checked its fit
        session = Session(pipe, adapter, subjects, config, matcher, injector)
        stack.callback(session.close)
        stack.enter_context(session.clock.installed())
        stack.enter_context(watch_tokenizer(pipe, session.on_tokenized))
        stack.callback(adapter.install(base_model(transformer), session.router))
        stack.callback(transformer.register_forward_pre_hook(session.before_forward, with_kwargs=True).remove)
        stack.callback(
            transformer.register_forward_hook(session.after_forward, with_kwargs=True, always_call=True).remove
        )
        logger.info("V-Warper active on %s (%s)", type(transformer).__name__, adapter.name)
        yield session
