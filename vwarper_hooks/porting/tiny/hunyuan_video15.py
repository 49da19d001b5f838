"""Tiny HunyuanVideo 1.5 (diffusers >= 0.36): 6 dual-stream blocks of 2 heads x 16 dims (patch size 1, as
released), a 3-layer Qwen2.5-VL text model (the pipeline reads its third-to-last hidden state), a tiny T5
as the glyph (byT5) encoder, an `AutoencoderKLHunyuanVideo15` compressing 16x in space and 4x in time
(as released) with 8 latent channels, `FlowMatchEulerDiscreteScheduler`, classifier-free guidance by
the pipeline's guider as separate calls (conditional first).

`TinyHunyuanVideo15Pipeline` is the stock pipeline with sizes fit for the word-list tokenizer: a chat
template that keeps the prompt behind a two-token prefix (crop 2; the release: a 108-token system
prompt), 16 text tokens (the release: 1000), 4 glyph tokens (256) and 4 vision tokens (729); and its
call also takes ``guidance_scale`` (set on the guider) and ``max_sequence_length`` (the text length),
which the stock call reads from the guider and the pipeline, so that `tiny_call_kwargs` fits every family.
"""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_text import TEXT_DIM, tie_query_key, tiny_text_encoder, tiny_tokenizer

#: the user's prompt behind "video of" (two word pieces): the pipeline crops them off the encoder output
CHAT_TEMPLATE = "{% for m in messages %}{% if m['role'] == 'user' %}video of {{ m['content'] }}{% endif %}{% endfor %}"
LATENT_CHANNELS = 8  # patch size 1: one latent pixel is one token, of 8 channels


def tiny_hunyuan_video15_transformer(num_layers: int = 6, seed: int = 0, **overrides: Any) -> Any:
    """`HunyuanVideo15Transformer3DModel`: 2 heads x 16 dims, `num_layers` dual-stream blocks, text-to-video
    inputs (latents, zero conditioning latents and a zero mask: 2 x 16 + 1 channels)."""
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        in_channels=2 * LATENT_CHANNELS + 1,
        out_channels=LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=num_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        text_embed_dim=TEXT_DIM,
        text_embed_2_dim=TEXT_DIM,
        image_embed_dim=8,
        rope_axes_dim=(4, 6, 6),
        target_size=32,
        task_type="t2v",
    )
    config.update(overrides)
    return HunyuanVideo15Transformer3DModel(**config).eval()


def _pipeline_class() -> type:
    from diffusers import HunyuanVideo15Pipeline

    class TinyHunyuanVideo15Pipeline(HunyuanVideo15Pipeline):
        """`HunyuanVideo15Pipeline` sized for the word-list tokenizer (see the module docstring)."""

        def __call__(self, *args: Any, guidance_scale: float | None = None, max_sequence_length: int | None = None,
                     **kwargs: Any) -> Any:
            if guidance_scale is not None:
                self.guider.guidance_scale = guidance_scale
            if max_sequence_length is not None:
                self.tokenizer_max_length = max_sequence_length
            return super().__call__(*args, **kwargs)

    return TinyHunyuanVideo15Pipeline


def tiny_hunyuan_video15_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False) -> Any:
    """A complete offline HunyuanVideo 1.5 text-to-video pipeline with random weights, in eval mode, on CPU."""
    from diffusers import AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    transformer = tiny_hunyuan_video15_transformer(num_layers, seed=seed)
    if tie_qk:
        tie_query_key(transformer)
    torch.manual_seed(seed)
    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
        pad_token_id=0, rope_theta=10000.0, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
    )).eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=LATENT_CHANNELS, block_out_channels=(16,) * 5,
                                      layers_per_block=1).eval()
    glyph_encoder = tiny_text_encoder(len(tokenizer), seed=seed)  # byT5 in the release
    pipe = _pipeline_class()(
        text_encoder=qwen, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=glyph_encoder,
        tokenizer_2=tiny_tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.prompt_template_encode_start_idx, pipe.tokenizer_max_length = 2, 16  # instance sizes the stock call reads
    pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = 4, 4
    pipe.set_progress_bar_config(disable=True)
    return pipe


pipeline = tiny_hunyuan_video15_pipeline
