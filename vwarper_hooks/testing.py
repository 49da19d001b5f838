"""Tiny, randomly initialised pipelines for tests and adapter authors (no downloads).

`tiny_cogvideox_pipeline()` builds a CogVideoX pipeline with 42 transformer layers (so the
paper's layer indices 12 and 20-29 exist), 2 heads x 16 dims, a T5 tokenizer made from a word
list, a tiny T5 encoder, a tiny VAE and `CogVideoXDDIMScheduler` with v-prediction.
`tiny_hunyuan_video_pipeline()` and `tiny_wan_pipeline()` (in `vwarper_hooks.tiny_models`) do the
same for HunyuanVideo and Wan (flow matching). The adapter conformance kit
(`vwarper_hooks.conformance`) is re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch

# A small word list: enough for test prompts; unknown words map to <unk>.
VOCAB_WORDS = (
    "a an the of on in at with and photo video clock dog cat toy beach snow table street park "
    "running sitting red blue green small big sks <clock> <dog> is walks flies under sky water"
).split()

TINY_HEIGHT = 32
TINY_WIDTH = 32
TINY_FRAMES = 5  # -> 2 latent frames
TINY_TEXT_LEN = 16


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


def tiny_cogvideox_transformer(num_layers: int = 42, seed: int = 0, rope: bool = True, **overrides: Any) -> Any:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=32,
        num_layers=num_layers,
        sample_width=TINY_WIDTH // 8,
        sample_height=TINY_HEIGHT // 8,
        sample_frames=TINY_FRAMES,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TINY_TEXT_LEN,
        use_rotary_positional_embeddings=rope,
    )
    config.update(overrides)
    return CogVideoXTransformer3DModel(**config).eval()


def tiny_cogvideox_vae(seed: int = 0) -> Any:
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()


def tie_query_key(transformer: Any) -> None:
    """Make every layer's key projection (and norm) equal its query's.

    In a random model the query of a token and the key of the same content are unrelated, so
    Q/K matching finds nothing; trained attention scores like content highest. Tying mimics it.
    """
    from .registry import get_adapter

    with torch.no_grad():
        for attn in get_adapter(transformer).attention_layers(transformer):
            attn.to_k.weight.copy_(attn.to_q.weight)
            if attn.to_k.bias is not None and attn.to_q.bias is not None:
                attn.to_k.bias.copy_(attn.to_q.bias)
            if attn.norm_q is not None and attn.norm_k is not None:
                attn.norm_k.load_state_dict(attn.norm_q.state_dict())


def tiny_cogvideox_pipeline(num_layers: int = 42, seed: int = 0, rope: bool = True, tie_qk: bool = False) -> Any:
    """A complete offline `CogVideoXPipeline` with random weights, in eval mode, on CPU."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    tokenizer = tiny_tokenizer()
    transformer = tiny_cogvideox_transformer(num_layers=num_layers, seed=seed, rope=rope)
    if tie_qk:
        tie_query_key(transformer)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed),
        vae=tiny_cogvideox_vae(seed=seed),
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_call_kwargs(**overrides: Any) -> dict[str, Any]:
    """Arguments for a fast, deterministic call of a tiny pipeline."""
    kwargs: dict[str, Any] = dict(
        prompt="a photo of a <clock> clock on the beach",
        negative_prompt="",
        height=TINY_HEIGHT,
        width=TINY_WIDTH,
        num_frames=TINY_FRAMES,
        num_inference_steps=2,
        guidance_scale=6.0,
        max_sequence_length=TINY_TEXT_LEN,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    kwargs.update(overrides)
    return kwargs


from .conformance import (  # noqa: E402
    AdapterConformance,
    ConformanceCase,
    ConformanceReport,
    case_from_pipeline,
    check_adapter,
    forward_inputs,
)
from .tiny_models import (  # noqa: E402
    tiny_hunyuan_video_pipeline,
    tiny_hunyuan_video_transformer,
    tiny_pipeline,
    tiny_wan_pipeline,
    tiny_wan_transformer,
)

__all__ = [
    "AdapterConformance",
    "ConformanceCase",
    "ConformanceReport",
    "case_from_pipeline",
    "check_adapter",
    "forward_inputs",
    "tie_query_key",
    "tiny_call_kwargs",
    "tiny_cogvideox_pipeline",
    "tiny_cogvideox_transformer",
    "tiny_hunyuan_video_pipeline",
    "tiny_hunyuan_video_transformer",
    "tiny_pipeline",
    "tiny_tokenizer",
    "tiny_wan_pipeline",
    "tiny_wan_transformer",
]
