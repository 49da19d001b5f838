"""Tiny HunyuanVideo: Llama text encoder (3 layers, the pipeline reads the third-to-last hidden state),
CLIP text encoder for the pooled projection, `AutoencoderKLHunyuanVideo`, `FlowMatchEulerDiscreteScheduler`.
The real prompt template (crop 95 Llama-3 tokens) makes no sense for a word-list tokenizer, so
`TinyHunyuanVideoPipeline` swaps in `TINY_PROMPT_TEMPLATE` whenever the caller leaves the default
template; everything else is the stock pipeline."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from ..tiny_text import TEXT_DIM, tie_query_key, tiny_tokenizer

#: "video of {}" tokenizes to two word pieces before the prompt with the tiny tokenizer.
TINY_PROMPT_TEMPLATE = {"template": "video of {}", "crop_start": 2}


class TinyHunyuanVideoPipeline(HunyuanVideoPipeline):
    """`HunyuanVideoPipeline` whose default prompt template fits the tiny word-list tokenizer."""

    def encode_prompt(self, *args: Any, prompt_template: dict | None = None, **kwargs: Any) -> Any:
        if prompt_template is None or prompt_template is DEFAULT_PROMPT_TEMPLATE:
            prompt_template = TINY_PROMPT_TEMPLATE
        return super().encode_prompt(*args, prompt_template=prompt_template, **kwargs)


def tiny_hunyuan_video_transformer(
    num_layers: int = 2, num_single_layers: int = 4, seed: int = 0, **overrides: Any
) -> Any:
    """`HunyuanVideoTransformer3DModel`: 2 heads x 16 dims, `num_layers` dual + `num_single_layers` single blocks."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        rope_axes_dim=(4, 6, 6),
    )
    config.update(overrides)
    return HunyuanVideoTransformer3DModel(**config).eval()


def tiny_hunyuan_video_pipeline(
    num_layers: int = 2, num_single_layers: int = 4, seed: int = 0, tie_qk: bool = False
) -> Any:
    """A complete offline HunyuanVideo pipeline with random weights, in eval mode, on CPU."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = tiny_tokenizer()
    transformer = tiny_hunyuan_video_transformer(num_layers, num_single_layers, seed=seed)
    if tie_qk:
        tie_query_key(transformer)
    torch.manual_seed(seed)
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
        )
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=TEXT_DIM,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=2,
        mid_block_add_attention=False,
    ).eval()
    pipe = TinyHunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip,
        tokenizer_2=tiny_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


pipeline = tiny_hunyuan_video_pipeline
