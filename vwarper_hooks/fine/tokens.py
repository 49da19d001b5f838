"""Where the subject token sits in the prompt, read from the tokenizer's host-side output.

The foreground score (appendix A) needs the subject token's position among the text tokens. The
pipeline tokenizes on the host and only then moves the ids to the device, so we watch the
tokenizer: `watch_tokenizer` puts a same-class copy of ``pipe.tokenizer`` in place for the
``with`` block that reports each call's ``input_ids``, and `SubjectTokens` finds the token in
them. No device tensor is ever read (no sync; the meta device works).

Every diffusers pipeline encodes the prompt before the negative prompt, so the first distinct text
tokenized since a run began is the prompt. Positions are a contiguous slice: a token is found as
one contiguous run of ids.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

SPACE = "▁"  # sentencepiece word-start marker


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of `text` without special tokens (a bare word-start piece is dropped when others remain)."""
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    space = tokenizer.convert_tokens_to_ids(SPACE)
    return [i for i in ids if i != space] or ids


class SubjectTokens:
    """Finds the subject token in the texts a pipeline tokenizes during one run."""

    def __init__(self, tokenizer: Any, token: str) -> None:
        variants = [token_ids(tokenizer, token)] if tokenizer is not None else []
        if variants:  # BPE tokenizers spell " <t>" apart from "<t>"
            spaced = token_ids(tokenizer, " " + token)
            if spaced and spaced != variants[0]:
                variants.append(spaced)
        self.variants = [v for v in variants if v]
        self._texts: list[tuple[Any, list[tuple[slice, int] | None]]] = []

    def new_run(self) -> None:
        """Forget what was tokenized before (a new pipeline call encodes its prompts again)."""
        self._texts = []

    def observe(self, text: Any, input_ids: Any) -> None:
        """Record one tokenizer call: its text argument and the ``input_ids`` it returned (host side)."""
        if not self.variants or input_ids is None:
            return
        rows = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
        if rows and not isinstance(rows[0], list):
            rows = [rows]
        hits = [self.find(row) for row in rows]
        key = repr(text)
        for seen_key, found in self._texts:
            if seen_key == key:
                found.extend(hits)
                return
        self._texts.append((key, hits))

    def find(self, row: list[int]) -> tuple[slice, int] | None:
        """(positions, length of the row) of the first occurrence of the token in `row`, or None."""
        for variant in self.variants:
            k = len(variant)
            for start in range(0, len(row) - k + 1):
                if row[start : start + k] == variant:
                    return slice(start, start + k), len(row)
        return None

    def in_prompt(self) -> tuple[slice, int] | None:
        """The token's place in the prompt (the first text tokenized this run), None if absent.

        Of the prompt's tokenizer calls, the longest row wins: pipelines tokenize once padded to the
        text length the encoder sees and once unpadded to check truncation.
        """
        if not self._texts:
            return None
        hits = [h for h in self._texts[0][1] if h is not None]
        return max(hits, key=lambda h: h[1]) if hits else None

    def elsewhere(self) -> bool:
        """Whether a later text of this run (the negative prompt) holds the token."""
        return any(h is not None for _, found in self._texts[1:] for h in found)

    def tokenized_anything(self) -> bool:
        return bool(self._texts)


@contextmanager
def watch_tokenizer(pipe: Any, observe: Callable[[Any, Any], None]) -> Iterator[None]:
    """Swap ``pipe.tokenizer`` for a shallow copy of its own class whose calls also go to
    ``observe(text, input_ids)``; the original object is back after the block (also on error).

    The copy is an instance of a subclass named and placed like the original, so `isinstance`
    checks and the pipeline config's (library, class) entry stay what they were.
    """
    original = getattr(pipe, "tokenizer", None)
    if original is None:
        yield
        return
    cls = type(original)
    # A class is always in a reference cycle (its __mro__): it reaches `observe` only through this
    # list, emptied on exit, so the observer (a session) is freed as soon as nothing else holds it.
    observers = [observe]

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = cls.__call__(self, *args, **kwargs)
        text = args[0] if args else kwargs.get("text")
        ids = out.get("input_ids") if hasattr(out, "get") else None
        for each in observers:
            each(text, ids)
        return out

    spy_cls = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    spy_cls.__qualname__ = cls.__qualname__
    spy = copy.copy(original)
    spy.__class__ = spy_cls
    pipe.tokenizer = spy
    try:
        yield
    finally:
        pipe.tokenizer = original
        observers.clear()
