"""The learnable subject token: a tokenizer copy that knows it, and an embedding that holds it.

Embedding space. The paper trains "a learnable subject token with a trainable text embedding
... in the text embedding space". We learn the token's row of the T5 *input* token-embedding
table (what `text_encoder.get_input_embeddings()` looks up), not a vector in the encoder's
output space. Reasons: (1) the token then goes through the whole T5 encoder like any word, so
its output depends on the context ("a <tok> dog on the beach") exactly as a real word would,
and the prompt keeps its usual 226-token layout; (2) an output-space vector would be one fixed
vector per position that ignores context and would have to be patched into the encoder output
after the fact, which stock pipelines (`pipe(prompt=...)`) cannot express; (3) it is the
textual-inversion convention, so the row can be installed by hand into any copy of the encoder
(`tokenizer.add_tokens`, `resize_token_embeddings`, set the row). The row is initialised from
the class word's input embedding (mean of its pieces), the usual textual-inversion start.

Nothing of the user's objects is mutated: `subject_token` swaps in a deep copy of the
tokenizer with the token added, and `SubjectEmbedding` (original table + one extra row) in
place of every reference to the input embedding module, and restores the originals on exit.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import SubjectError

logger = logging.getLogger(__name__)

SPACE = "▁"  # sentencepiece word-start marker


class SubjectEmbedding(nn.Module):
    """The original embedding table plus one extra row for the subject token id.

    Ids equal to `token_id` read `row`; every other id reads the untouched original table,
    so no other embedding can change (the original table is not even in the optimizer).
    Works whether `token_id` lies inside the original table (T5 has spare rows) or past it.
    """

    def __init__(self, base: nn.Embedding, token_id: int, row: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.token_id = int(token_id)
        self.row = row if isinstance(row, nn.Parameter) else nn.Parameter(row, requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The original table (for code that reads ``embed_tokens.weight.dtype`` and the like)."""
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hit = input_ids == self.token_id
        out = self.base(input_ids.masked_fill(hit, 0))
        row = self.row.to(device=out.device, dtype=out.dtype)
        return torch.where(hit.unsqueeze(-1), row, out)


def input_embedding(text_encoder: nn.Module, stack: bool = False) -> nn.Module:
    """The text encoder's input token-embedding table (raises if it has none we understand).

    :param stack: accept a `SubjectEmbedding` already in place (another subject of the same
        `inject`): the new token's wrapper goes around it.
    """
    getter = getattr(text_encoder, "get_input_embeddings", None)
    emb = getter() if getter is not None else None
    if isinstance(emb, SubjectEmbedding) and stack:
        return emb
    if isinstance(emb, SubjectEmbedding):
        raise SubjectError(
            "Expected a text encoder without an active subject token, but got one with a "
            "SubjectEmbedding installed. Leave the other inject()/train_subject() first."
        )
    if not isinstance(emb, nn.Embedding):
        raise SubjectError(
            f"Expected a text encoder whose get_input_embeddings() is an nn.Embedding, but got "
            f"{type(emb).__name__}. Use a transformers text encoder (T5) with a plain embedding table."
        )
    return emb


def token_problems(tokenizer: Any, token: str) -> list[str]:
    """Reasons `token` cannot become a new subject token for `tokenizer` (empty: fine)."""
    if not isinstance(token, str) or not token.strip():
        return [f"Expected a non-empty subject token such as '<sks>', but got {token!r}. Pass e.g. '<my-dog>'."]
    if token != token.strip() or any(c.isspace() for c in token):
        return [f"Expected a subject token without whitespace, but got {token!r}. Use e.g. '<my-dog>'."]
    vocab = tokenizer.get_vocab()
    pieces = [p for p in tokenizer.tokenize(token) if p != SPACE]
    known = token in vocab or (
        len(pieces) == 1 and tokenizer.convert_tokens_to_ids(pieces[0]) != tokenizer.unk_token_id
    )
    if known:
        return [
            f"Expected a subject token the tokenizer does not know yet, but got {token!r}, already "
            f"token {pieces[0] if pieces else token!r} in its vocabulary. Use a fresh string such as "
            f"'<{token.strip('<>')}-vw>' so no existing word changes meaning."
        ]
    return []


def class_word_ids(tokenizer: Any, class_word: str) -> list[int]:
    """Ids of the class word's pieces (a bare word-start piece is dropped when others remain)."""
    ids = tokenizer(class_word, add_special_tokens=False).input_ids
    space = tokenizer.convert_tokens_to_ids(SPACE)
    return [i for i in ids if i != space] or list(ids)


def class_word_embedding(tokenizer: Any, embedding: nn.Embedding, class_word: str) -> torch.Tensor:
    """Mean input embedding of the class word's pieces, float32 on CPU (the token's init)."""
    ids = class_word_ids(tokenizer, class_word) if class_word and class_word.strip() else []
    if not ids:
        raise SubjectError(
            f"Expected a class word such as 'dog' that tokenizes to at least one piece, but got "
            f"{class_word!r}. Pass the subject's category."
        )
    if tokenizer.unk_token_id in ids:
        logger.warning("class word %r contains unknown pieces; its <unk> embedding is averaged in", class_word)
    with torch.no_grad():
        rows = embedding.weight[torch.tensor(ids, device=embedding.weight.device)]
        return rows.float().mean(0).cpu()


def _embedding_slots(text_encoder: nn.Module, emb: nn.Embedding) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute) holding `emb` or another Embedding sharing its weight.

    transformers 5 gives T5EncoderModel separate `shared` and `encoder.embed_tokens` modules
    tied by weight; the forward uses the latter, `get_input_embeddings()` returns the former.
    """
    slots: dict[tuple[int, str], tuple[nn.Module, str]] = {}
    for _, module in text_encoder.named_modules(remove_duplicate=False):
        if isinstance(module, SubjectEmbedding):
            continue  # another subject's wrapper holds the table itself: the new wrapper goes around it
        for attr, child in module.named_children():
            if child is emb or (isinstance(child, nn.Embedding) and child.weight is emb.weight):
                slots[(id(module), attr)] = (module, attr)
    return list(slots.values())


@contextmanager
def subject_token(pipe: Any, token: str, row: torch.Tensor) -> Iterator[int]:
    """Make `pipe` understand `token` with input embedding `row`; yields the token id.

    Swaps ``pipe.tokenizer`` for a deep copy with the token added and every reference to the
    text encoder's input embedding for a `SubjectEmbedding`; both are restored on exit (also on
    error). `row` may be an ``nn.Parameter`` (training) or a plain tensor (inference).
    """
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    problems = token_problems(tokenizer, token)
    if problems:
        raise SubjectError(problems[0])
    emb = input_embedding(text_encoder, stack=True)
    if row.shape != (emb.embedding_dim,):
        raise SubjectError(
            f"Expected a token embedding of shape ({emb.embedding_dim},) for this text encoder, but got "
            f"{tuple(row.shape)}. The subject was trained for another text encoder; retrain it for this pipe."
        )
    copy_ = copy.deepcopy(tokenizer)
    copy_.add_tokens([token])
    token_id = copy_.convert_tokens_to_ids(token)
    if not isinstance(row, nn.Parameter):
        row = row.detach().to(device=emb.weight.device, dtype=emb.weight.dtype)
    wrapper = SubjectEmbedding(emb, token_id, row)
    slots = _embedding_slots(text_encoder, emb)
    originals = [(parent, attr, getattr(parent, attr)) for parent, attr in slots]
    try:
        for parent, attr, _ in originals:
            setattr(parent, attr, wrapper)
        pipe.tokenizer = copy_
        logger.debug("subject token %r active as id %d", token, token_id)
        yield token_id
    finally:
        pipe.tokenizer = tokenizer
        for parent, attr, original in originals:
            setattr(parent, attr, original)
