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


def tiny_tokenizer(words: tuple[str, ...] | list[str] | None = None) -> Any:
    """A T5-style tokenizer built in code from `words` (default `VOCAB_WORDS`; Unigram, no files, no downloads).

    Built with the `tokenizers` library (the pieces T5's own fast tokenizer is made of: Unigram,
    Metaspace, ``</s>`` appended) and wrapped in a transformers fast tokenizer, so it behaves the
    same on every supported transformers version (4.x and 5.x). Ids: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, ``▁`` 3, then one piece per word, single letters, and 100 ``<extra_id_N>`` sentinels.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -5.0) for w in (VOCAB_WORDS if words is None else words)]
    vocab += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz<>"]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    backend = Tokenizer(Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(100)],
    )


def tiny_text_encoder(vocab_size: int, seed: int = 0, umt5: bool = False) -> Any:
    """A tiny T5 encoder (CogVideoX's text encoder; ``umt5=True``: Wan's UMT5 of the same size)."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
    )
    return model_cls(config).eval()


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
