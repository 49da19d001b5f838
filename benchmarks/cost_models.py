"""The released models' configs and their meta-device pipelines, for `cost.py` (the full shapes).

Every model is built from its released diffusers / transformers config, written here as a dict
(sources: the configs of THUDM/CogVideoX-5b, Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers and
hunyuanvideo-community/HunyuanVideo as diffusers' conversion scripts write them, and the class
defaults of the diffusers release installed, which are those configs), on the meta device: weights
and activations are shapes only. The tokenizer is `vwarper_hooks.testing.tiny_tokenizer()` (its ids
lie inside every real vocabulary); prompts are padded to each model's real text length, so every
text encoder and transformer sees the released sequence lengths.
"""

from __future__ import annotations

from typing import Any

import torch
from cost_configs import Shape, _meta

COGVIDEOX_5B = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=True,
)
T5_XXL = dict(  # google/t5-v1_1-xxl encoder (CogVideoX's text_encoder)
    vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
)
COGVIDEOX_VAE = dict(
    block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3, norm_num_groups=32,
    temporal_compression_ratio=4, sample_height=480, sample_width=720, scaling_factor=0.7,
)
COGVIDEOX_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, num_train_timesteps=1000,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=1.0,
    timestep_spacing="trailing",
)
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
UMT5_XXL = dict(  # google/umt5-xxl encoder (Wan's text_encoder)
    vocab_size=256384, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
)
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])
WAN_SCHEDULER = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)
HUNYUAN_VIDEO = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
    guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
)
LLAVA_LLAMA3_8B = dict(  # HunyuanVideo's text_encoder (llava-llama-3-8b, text tower)
    vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
)
CLIP_L_TEXT = dict(  # openai/clip-vit-large-patch14 text tower (HunyuanVideo's text_encoder_2)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
)
HUNYUAN_VAE = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                   temporal_compression_ratio=4, spatial_compression_ratio=8, scaling_factor=0.476986)
#: SkyReels-V2 (Wan's architecture): the transformer configs diffusers' conversion script writes for the
#: 14B models (40 layers, 40 heads x 128, ffn 13824) and the 1.3B one (30 layers, 12 heads, ffn 8960; the
#: released 1.3B is a diffusion-forcing model, costed here as the text-to-video pipeline runs it)
SKYREELS_V2_14B = {**WAN_14B}
SKYREELS_V2_1_3B = {**WAN_1_3B}
SKYREELS_V2_SCHEDULER = {**WAN_SCHEDULER, "flow_shift": 8.0}
#: LTX-Video 2B (0.9.x): the class defaults of LTXVideoTransformer3DModel and AutoencoderKLLTXVideo, which are
#: the Lightricks/LTX-Video 0.9.0 configs (28 layers, 32 heads x 64, T5-XXL captions; VAE 32x / 8x, 128
#: channels), and its scheduler config (resolution-dependent shift)
LTX_VIDEO_2B: dict[str, Any] = {}
LTX_VIDEO_VAE: dict[str, Any] = {}
LTX_VIDEO_SCHEDULER = dict(base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05,
                           shift=1.0, shift_terminal=0.1, use_dynamic_shifting=True)
#: HunyuanVideo 1.5 (8.3B), 480p text-to-video: the transformer config diffusers' conversion script writes for
#: "480p_t2v" (54 dual-stream layers, 16 heads x 128; 2C + 1 = 65 input channels), Qwen2.5-VL-7B's text tower
#: (hidden 3584, 28 layers), byT5-small as the glyph encoder (d_model 1472; idle without quoted text), the VAE's
#: class defaults (16x / 4x, 32 channels), scheduler shift 5.0, guidance 6.0
HUNYUAN_VIDEO15 = dict(
    in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
    num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=3584,
    text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0, rope_axes_dim=(16, 56, 56), target_size=640,
    task_type="t2v", use_meanflow=False,
)
QWEN25_VL_7B_TEXT = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
    rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},  # as its hub config
)
BYT5_SMALL = dict(vocab_size=1510, d_model=1472, d_ff=3584, d_kv=64, num_heads=6, num_layers=12,
                  feed_forward_proj="gated-gelu")
#: HunyuanVideo's prompt template puts 95 tokens before the prompt (crop_start=95); this one has 95
#: tokens of the tiny tokenizer's vocabulary, so the Llama encoder sees the released 256 + 95 tokens.
HUNYUAN_TEMPLATE = {"template": "video " * 95 + "{}", "crop_start": 95}


def cogvideox_5b() -> Any:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vwarper_hooks.testing import tiny_tokenizer

    with torch.device("meta"):
        transformer = _meta(CogVideoXTransformer3DModel(**COGVIDEOX_5B), torch.bfloat16)
        text = _meta(T5EncoderModel(T5Config(**T5_XXL)), torch.bfloat16)
        vae = _meta(AutoencoderKLCogVideoX(**COGVIDEOX_VAE), torch.bfloat16)
    return CogVideoXPipeline(tokenizer=tiny_tokenizer(), text_encoder=text, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER))


def wan(config: dict[str, Any], family: str = "Wan", scheduler: dict[str, Any] = WAN_SCHEDULER) -> Any:
    """A Wan-architecture pipeline: ``family`` "Wan" (`WanPipeline`) or "SkyReelsV2" (`SkyReelsV2Pipeline`)."""
    import diffusers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from vwarper_hooks.testing import tiny_tokenizer

    model, pipeline = getattr(diffusers, f"{family}Transformer3DModel"), getattr(diffusers, f"{family}Pipeline")
    with torch.device("meta"):
        transformer = _meta(model(**config), torch.bfloat16)
        text = _meta(UMT5EncoderModel(UMT5Config(**UMT5_XXL)), torch.bfloat16)
        vae = _meta(AutoencoderKLWan(**WAN_VAE), torch.float32)  # the docs load Wan's VAE in float32
    return pipeline(tokenizer=tiny_tokenizer(), text_encoder=text, vae=vae, transformer=transformer,
                    scheduler=UniPCMultistepScheduler(**scheduler))


def ltx_video() -> Any:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from vwarper_hooks.testing import tiny_tokenizer

    with torch.device("meta"):
        transformer = _meta(LTXVideoTransformer3DModel(**LTX_VIDEO_2B), torch.bfloat16)
        text = _meta(T5EncoderModel(T5Config(**T5_XXL)), torch.bfloat16)
        vae = _meta(AutoencoderKLLTXVideo(**LTX_VIDEO_VAE), torch.bfloat16)
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**LTX_VIDEO_SCHEDULER), vae=vae, text_encoder=text,
                       tokenizer=tiny_tokenizer(), transformer=transformer)


def hunyuan_video() -> Any:
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from vwarper_hooks.testing import tiny_tokenizer

    class Pipeline(HunyuanVideoPipeline):
        def encode_prompt(self, *args: Any, prompt_template: dict | None = None, **kwargs: Any) -> Any:
            if prompt_template is None or prompt_template is DEFAULT_PROMPT_TEMPLATE:
                prompt_template = HUNYUAN_TEMPLATE
            return super().encode_prompt(*args, prompt_template=prompt_template, **kwargs)

    with torch.device("meta"):
        transformer = _meta(HunyuanVideoTransformer3DModel(**HUNYUAN_VIDEO), torch.bfloat16)
        # the docs load the text encoders in float16; in bfloat16 here because V-Warper's reference text
        # (adapters/hunyuan_video.py encode_text) keeps the encoders' dtype and a cold call then fails
        llama = _meta(LlamaModel(LlamaConfig(**LLAVA_LLAMA3_8B)), torch.bfloat16)
        clip = _meta(CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)), torch.bfloat16)
        vae = _meta(AutoencoderKLHunyuanVideo(**HUNYUAN_VAE), torch.float16)
    return Pipeline(text_encoder=llama, tokenizer=tiny_tokenizer(), transformer=transformer, vae=vae,
                    scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                    tokenizer_2=tiny_tokenizer())


def hunyuan_video15() -> Any:
    """HunyuanVideo 1.5 480p T2V; the prompt template's 108-token system prompt stands as 108 tiny-vocabulary
    words (crop 108), so Qwen sees the released 1000 + 108 tokens."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    from vwarper_hooks.testing import tiny_tokenizer

    class Pipeline(HunyuanVideo15Pipeline):  # the guidance scale lives on the guider: take it as the others do
        def __call__(self, *args: Any, guidance_scale: float | None = None, **kwargs: Any) -> Any:
            if guidance_scale is not None:
                self.guider.guidance_scale = guidance_scale
            return super().__call__(*args, **kwargs)

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}" + "video " * 108
                               + "{{ m['content'] }}{% endif %}{% endfor %}")
    with torch.device("meta"):
        transformer = _meta(HunyuanVideo15Transformer3DModel(**HUNYUAN_VIDEO15), torch.bfloat16)
        qwen = _meta(Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**QWEN25_VL_7B_TEXT)), torch.bfloat16)
        byt5 = _meta(T5EncoderModel(T5Config(**BYT5_SMALL)), torch.bfloat16)
        vae = _meta(AutoencoderKLHunyuanVideo15(), torch.bfloat16)
    return Pipeline(text_encoder=qwen, tokenizer=tokenizer, transformer=transformer, vae=vae,
                    scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=byt5,
                    tokenizer_2=tiny_tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=6.0))


def full_shapes() -> list[Shape]:
    cog = dict(height=480, width=720, guidance_scale=6.0, max_sequence_length=226)
    return [
        Shape("CogVideoX-5B 25f", cogvideox_5b, {**cog, "num_frames": 25}),
        Shape("CogVideoX-5B 49f", cogvideox_5b, {**cog, "num_frames": 49}, note="49 frames: the pipeline default"),
        Shape("Wan2.1-T2V-1.3B", lambda: wan(WAN_1_3B),
              dict(height=480, width=832, num_frames=81, guidance_scale=5.0, max_sequence_length=512),
              note="WanPipeline defaults: 480x832, 81 frames, 50 steps, guidance 5.0 (CFG as 2 calls), text 512"),
        Shape("Wan2.1-T2V-14B", lambda: wan(WAN_14B),
              dict(height=480, width=832, num_frames=81, guidance_scale=5.0, max_sequence_length=512),
              note="same defaults (480P; the docs example also shows 720x1280)"),
        Shape("SkyReels-V2-T2V-14B-540P", lambda: wan(SKYREELS_V2_14B, "SkyReelsV2", SKYREELS_V2_SCHEDULER),
              dict(height=544, width=960, num_frames=97, guidance_scale=6.0, max_sequence_length=512),
              note="SkyReelsV2Pipeline defaults: 544x960, 97 frames, 50 steps, guidance 6.0 (CFG as 2 calls), "
                   "text 512, shift 8"),
        Shape("SkyReels-V2 1.3B (T2V)", lambda: wan(SKYREELS_V2_1_3B, "SkyReelsV2", SKYREELS_V2_SCHEDULER),
              dict(height=544, width=960, num_frames=97, guidance_scale=6.0, max_sequence_length=512),
              note="the 1.3B sizes through the text-to-video pipeline at its defaults"),
        Shape("LTX-Video 2B", ltx_video,
              dict(height=512, width=704, num_frames=161, guidance_scale=3.0, max_sequence_length=128),
              note="LTXPipeline defaults: 512x704, 161 frames, 50 steps, guidance 3.0 (CFG as one batch of 2), "
                   "text 128"),
        Shape("HunyuanVideo 1.5 480p", hunyuan_video15, dict(height=480, width=848, num_frames=121, guidance_scale=6.0),
              note="HunyuanVideo15Pipeline defaults: 480x848 (target size 640 at 16:9), 121 frames, 50 steps, "
                   "guidance 6.0 by the guider (CFG as 2 calls), text 1000 + 108 template tokens, 256 glyph, "
                   "729 vision tokens"),
        Shape("HunyuanVideo", hunyuan_video,
              dict(height=320, width=512, num_frames=61, guidance_scale=6.0, max_sequence_length=256),
              note="the diffusers docs example size (320x512, 61 frames; the docs use 30 steps, we 50); "
                   "guidance 6.0 is embedded (no CFG batch), text 256 + 95 template tokens"),
    ]


