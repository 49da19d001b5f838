"""Tiny, randomly initialised pipelines of the built-in families, one module per family (offline, CPU,
well under a second per call). Each module `<family>.py` (its name in `families.TINY_FAMILIES`) defines
``pipeline(**kwargs)``, the complete tiny pipeline in eval mode, and the tiny transformer it is built on.

Shared sizes: 5 frames of 32 x 32 px, which every tiny VAE and patch size turns into a 2 x 2 x 2 grid of
8 video tokens; prompts padded to 16 text tokens. Every tokenizer slot gets the word-list tokenizer of
`porting.tiny_text` (the pipelines only call ``tokenizer(...)`` and read ``input_ids`` / ``attention_mask``).
"""

from __future__ import annotations

TINY_HEIGHT = 32
TINY_WIDTH = 32
TINY_FRAMES = 5  # -> 2 latent frames with a temporal compression of 4
TINY_TEXT_LEN = 16
