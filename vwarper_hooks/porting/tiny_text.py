"""The tiny text side shared by every tiny pipeline: a word-list T5 tokenizer built in code (no
files, no downloads), a tiny T5 encoder, and `tie_query_key`, which makes random attention match
like trained attention does."""

from __future__ import annotations

from typing import Any

import torch

from ..plugins import get_adapter

# A small word list: enough for test prompts; unknown words map to <unk>.
VOCAB_WORDS = (
    "a an the of on in at with and photo video clock dog cat toy beach snow table street park "
    "running sitting red blue green small big sks <clock> <dog> is walks flies under sky water"
).split()

TEXT_DIM = 32


def tiny_tokenizer() -> Any:
    """A T5 tokenizer built in code from `VOCAB_WORDS` (Unigram, no files)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -5.0) for w in VOCAB_WORDS]
    vocab += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz<>"]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, additional_special_tokens=[f"<extra_id_{i}>" for i in range(100)])


def tiny_text_encoder(vocab_size: int, seed: int = 0) -> Any:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
    )
    return T5EncoderModel(config).eval()


def tie_query_key(transformer: Any) -> None:
    """Make every layer's key projection (and norm) equal its query's.

    In a random model the query of a token and the key of the same content are unrelated, so
    Q/K matching finds nothing; trained attention scores like content highest. Tying mimics it.
    """
    with torch.no_grad():
        for attn in get_adapter(transformer).attention_layers(transformer):
            attn.to_k.weight.copy_(attn.to_q.weight)
            if attn.to_k.bias is not None and attn.to_q.bias is not None:
                attn.to_k.bias.copy_(attn.to_q.bias)
            if attn.norm_q is not None and attn.norm_k is not None:
                attn.norm_k.load_state_dict(attn.norm_q.state_dict())
