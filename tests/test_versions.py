"""Version floors: the tiny tokenizers are built with `tokenizers` (no version-specific constructor),
and CI's floor stage pins exactly the lower bounds declared in pyproject.toml (see .ci/run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vwarper_hooks.testing import VOCAB_WORDS, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_tokenizer_is_a_fast_tokenizer_over_the_word_list():
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    tokenizer = tiny_tokenizer()
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert isinstance(tokenizer.backend_tokenizer.model, Unigram)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a <clock> clock on the beach").input_ids
    words = ["a", "<clock>", "clock", "on", "the", "beach"]
    assert ids == [4 + VOCAB_WORDS.index(w) for w in words] + [1]  # one piece per word, then </s>
    assert tokenizer.tokenize("<my-clock>") != ["▁<my-clock>"]  # unknown words split into pieces
    padded = tokenizer("a dog", padding="max_length", max_length=6, truncation=True)
    assert padded.input_ids == [4, 4 + VOCAB_WORDS.index("dog"), 1, 0, 0, 0]
    assert padded.attention_mask == [1, 1, 1, 0, 0, 0]


def test_tiny_clip_tokenizer_truncates_at_clip_length():
    from vwarper_hooks.apps.evaluation import tiny_clip_embedder

    tokenizer = tiny_clip_embedder().processor.tokenizer
    ids = tokenizer(["a dog", "x" * 200], padding=True, truncation=True).input_ids
    assert len(ids[1]) == 77 and ids[1][0] == 0 and ids[1][-1] == 1  # <|startoftext|> ... <|endoftext|>


def test_floor_pins_cover_every_dependency():
    floors = ROOT / ".ci" / "floors.py"
    if sys.version_info < (3, 11):  # pragma: no cover - floors.py reads pyproject with tomllib
        pytest.skip("tomllib")
    done = subprocess.run([sys.executable, str(floors), "--torch", "9.9.9", "--loose", "test"],
                          capture_output=True, text=True, check=True)
    pins = dict(line.split("==") for line in done.stdout.split() if "==" in line)
    assert pins["torch"] == "9.9.9"
    assert tuple(map(int, pins["diffusers"].split("."))) >= (0, 34)  # LoRA alpha from the metadata
    for name in ("transformers", "tokenizers", "peft", "accelerate", "safetensors", "pillow", "numpy"):
        assert name in pins
    assert "pytest>=8" in done.stdout.split()  # test tools stay unpinned
    assert "floors.py" in (ROOT / ".ci" / "run").read_text()
