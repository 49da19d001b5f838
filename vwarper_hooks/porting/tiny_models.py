"""Tiny, randomly initialised pipelines of every built-in family (offline, CPU, well under a second per call).

- CogVideoX: 42 transformer layers (so the paper's layer indices 12 and 20-29 exist), 2 heads x
  16 dims, the word-list T5 tokenizer of `tiny_text`, a tiny T5 encoder, a tiny VAE and
  `CogVideoXDDIMScheduler` with v-prediction.
- HunyuanVideo: Llama text encoder (3 layers, the pipeline reads the third-to-last hidden state),
  CLIP text encoder for the pooled projection, `AutoencoderKLHunyuanVideo`,
  `FlowMatchEulerDiscreteScheduler`. The real prompt template (crop 95 Llama-3 tokens) makes no
  sense for a word-list tokenizer, so `TinyHunyuanVideoPipeline` swaps in `TINY_PROMPT_TEMPLATE`
  whenever the caller leaves the default template; everything else is the stock pipeline.
- Wan: UMT5 text encoder, `AutoencoderKLWan`, `UniPCMultistepScheduler` with flow sigmas (Wan's own
  default), separate CFG passes (conditional first). Wan 2.2 A14B ("wan22"): the same with two experts.

Every tokenizer slot gets the word-list tokenizer: the pipelines only call ``tokenizer(...)`` and
read ``input_ids`` / ``attention_mask``. Token grid: 5 frames of 32 x 32 px -> 2 latent frames of
4 x 4 -> 2 x 2 x 2 = 8 video tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from .families import TINY_FAMILIES
from .tiny_text import TEXT_DIM, tie_query_key, tiny_text_encoder, tiny_tokenizer

TINY_HEIGHT = 32
TINY_WIDTH = 32
TINY_FRAMES = 5  # -> 2 latent frames
TINY_TEXT_LEN = 16


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


def tiny_wan_transformer(num_layers: int = 6, seed: int = 0, **overrides: Any) -> Any:
    """`WanTransformer3DModel`: 2 heads x 16 dims, `num_layers` blocks (self-attention + cross-attention)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=num_layers,
        rope_max_seq_len=32,
    )
    config.update(overrides)
    return WanTransformer3DModel(**config).eval()


def tiny_wan_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False) -> Any:
    """A complete offline Wan text-to-video pipeline with random weights, in eval mode, on CPU."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    tokenizer = tiny_tokenizer()
    transformer = tiny_wan_transformer(num_layers, seed=seed)
    if tie_qk:
        tie_query_key(transformer)
    torch.manual_seed(seed)
    encoder = tiny_text_encoder(len(tokenizer), seed=seed, umt5=True)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan22_pipeline(num_layers: int = 6, seed: int = 0, tie_qk: bool = False, boundary_ratio: float = 0.875) -> Any:
    """Wan 2.2 A14B in small: `tiny_wan_pipeline` with a second expert (``transformer_2``, other random weights)
    for the timesteps below ``boundary_ratio * 1000`` (A14B's 0.875: of 5 steps at flow shift 3, steps 0-1 run
    ``transformer``, steps 2-4 ``transformer_2``)."""
    from diffusers import WanPipeline

    one = tiny_wan_pipeline(num_layers, seed=seed, tie_qk=tie_qk)
    second = tiny_wan_transformer(num_layers, seed=seed + 1)
    if tie_qk:
        tie_query_key(second)
    pipe = WanPipeline(tokenizer=one.tokenizer, text_encoder=one.text_encoder, vae=one.vae, scheduler=one.scheduler,
                       transformer=one.transformer, transformer_2=second, boundary_ratio=boundary_ratio)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: The tiny pipeline builder of each built-in family (names: `families.TINY_FAMILIES`).
FAMILIES = {
    "cogvideox": tiny_cogvideox_pipeline,
    "hunyuan_video": tiny_hunyuan_video_pipeline,
    "wan": tiny_wan_pipeline,
    "wan22": tiny_wan22_pipeline,
}


if tuple(sorted(FAMILIES)) != tuple(sorted(TINY_FAMILIES)):  # pragma: no cover - a family added in one place only
    raise ImportError(f"tiny_models.FAMILIES {sorted(FAMILIES)} differs from families.TINY_FAMILIES {TINY_FAMILIES}")


def tiny_pipeline(family: str, **kwargs: Any) -> Any:
    """The tiny pipeline of `family` (a key of `FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"Expected one of {sorted(FAMILIES)}, but got {family!r}. Pick one of those.")
    return FAMILIES[family](**kwargs)


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
