"""One pipeline call at a time under `inject`: a call from a second thread is refused at once.

A session follows one pipeline call at a time: its step clock wraps the scheduler (whose timesteps
the pipeline itself shares between calls), its tokenizer watch takes the first prompt tokenized as
this run's prompt, and its reference branch and warp plan belong to the run in progress. A second
thread's call would reset the first's clock and read the other prompt's token (diffusers pipelines
are not thread-safe either), so `one_call_at_a_time` refuses it before it touches anything, and the
first call runs on unharmed. A call from the thread already inside one (a callback) is allowed.

The pipeline is guarded the way `tokens.watch_tokenizer` watches the tokenizer: for the ``with``
block its class is a same-named subclass whose ``__call__`` takes the guard (``type(pipe).__call__``
keeps its signature: `inspect.signature` follows ``__wrapped__``); on exit the class is restored.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import VwarperError

logger = logging.getLogger(__name__)


class CallGuard:
    """Which thread has a pipeline call running (and how deep it is nested), under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None
        self.depth = 0

    def enter(self) -> None:
        me = threading.get_ident()
        with self._lock:
            if self.owner not in (None, me):
                raise VwarperError(
                    "Expected one pipeline call at a time under inject(), but another thread's call is running: "
                    "the session's step clock, prompt-token watch and reference branch (and the pipeline's "
                    "scheduler) follow one call, and a second would corrupt the first. Do wait for it (e.g. with "
                    "a threading.Lock around pipe(...)), or give each thread its own pipeline and inject()."
                )
            self.owner, self.depth = me, self.depth + 1

    def leave(self) -> None:
        with self._lock:
            self.depth -= 1
            if not self.depth:
                self.owner = None


@contextmanager
def one_call_at_a_time(pipe: Any) -> Iterator[CallGuard]:
    """For the ``with`` block, a call of `pipe` while another thread's call runs raises `VwarperError`."""
    cls, guard = type(pipe), CallGuard()
    call = cls.__call__

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        guard.enter()
        try:
            return call(self, *args, **kwargs)
        finally:
            guard.leave()

    guarded = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    guarded.__qualname__ = cls.__qualname__
    try:
        pipe.__class__ = guarded
    except TypeError:  # a class whose instances cannot change class (slots, extension types)
        logger.warning("%s cannot be guarded: calls from several threads under inject() are not refused", cls)
        yield guard
        return
    try:
        yield guard
    finally:
        if type(pipe) is guarded:  # nobody swapped it meanwhile
            pipe.__class__ = cls
