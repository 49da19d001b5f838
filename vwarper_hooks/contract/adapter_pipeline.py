"""The `Adapter` methods that build forward calls and face the pipeline around the transformer (text, VAE,
sizes), with defaults.

Mixed into `vwarper_hooks.contract.adapter.Adapter`; a family overrides only where it differs. The video defaults
assume what most diffusers video pipelines do: channel-first latents (batch, channels, frames, height,
width), a VAE whose config says how its latents are normalised, and ``pipe.vae_scale_factor_temporal`` /
``pipe.vae_scale_factor_spatial`` for the compression.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def call_default(pipe: Any, name: str) -> Any:
    """The default of argument `name` of ``pipe.__call__`` (None when it has no such argument)."""
    try:
        parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


class PipelineDefaults:
    """The `Adapter` methods that build forward calls and face the pipeline (text, VAE, sizes), with defaults."""

    #: see `Adapter.batched_kwargs`
    batched_kwargs: tuple[str, ...] = ()

    def reference_kwargs(
        self, kwargs: dict[str, Any], latents: torch.Tensor, text: dict[str, torch.Tensor], timestep: torch.Tensor
    ) -> dict[str, Any]:
        """Forward kwargs for a reference-branch call derived from a generation call's kwargs.

        :param latents: (k, ...) the reference latents: one sample per reference photo.
        :param text: the text conditioning from `encode_text` (batch 1), merged over the generation's.
        Default: the generation's kwargs with the reference latents (`with_latents`), the timestep (in the generation
        timestep's dtype) and the text, both expanded to the k samples, and each of `batched_kwargs`
        cut to its first row and expanded the same way.
        """
        batch = latents.shape[0]

        def expanded(value: Any) -> Any:
            if not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] == batch:
                return value
            return value[:1].expand(batch, *value.shape[1:])

        # the pipeline casts its own text conditioning to the generation's dtypes: so do we (e.g. HunyuanVideo's
        # pooled projections and mask come out of float16 encoders / as int64)
        text = {k: v.to(kwargs[k].dtype) if torch.is_tensor(v) and torch.is_tensor(kwargs.get(k)) else v
                for k, v in text.items()}
        ref = {**kwargs, **{k: expanded(v) for k, v in text.items()}}
        generation_t = kwargs.get("timestep")
        if isinstance(generation_t, torch.Tensor):
            timestep = timestep.to(generation_t.dtype)
        ref = self.with_latents(ref, latents)
        ref.update(timestep=expanded(timestep.reshape(-1)), return_dict=False)
        for name in self.batched_kwargs:
            if torch.is_tensor(ref.get(name)):
                ref[name] = expanded(ref[name][:1])
        return ref

    def forward_kwargs(
        self, pipe: Any, latents: torch.Tensor, timestep: torch.Tensor, text: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Kwargs of a standalone transformer call (training, analysis): no pipeline call around it.

        :param latents: (B, ...) latents in the transformer layout.
        :param timestep: (B,) model timesteps.
        :param text: text conditioning of batch 1 from `encode_text`; tensors are expanded to B.
        Default: the latents (`with_latents`), ``timestep``, the text and ``return_dict=False``. Add what the
        pipeline would compute besides (CogVideoX: its 3D RoPE; HunyuanVideo: the guidance embedding).
        """
        batch = latents.shape[0]
        text = {k: v.expand(batch, *v.shape[1:]) if torch.is_tensor(v) else v for k, v in text.items()}
        return self.with_latents({"timestep": timestep, **text, "return_dict": False}, latents)

    def encode_text(self, pipe: Any, prompt: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Text conditioning of `prompt` as transformer forward kwargs (batch 1, no CFG).

        :param kwargs: a generation forward call's kwargs (to match its text length, dtype, device);
            outside a generation, `text_template` stands in for them.
        Default: the pipeline's own ``encode_prompt`` as CogVideoX and Wan define it (T5 embeddings
        padded to the generation's text length); override for other text encoders.
        """
        generation = kwargs["encoder_hidden_states"]
        embeds, _ = pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=generation.shape[1],
            device=generation.device,
            dtype=generation.dtype,
        )
        return {"encoder_hidden_states": embeds}

    def text_template(self, pipe: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """Stand-in for a generation call's text kwargs, for `encode_text` outside a generation.

        `encode_text` reads only the length, dtype and device of ``encoder_hidden_states``.
        Default: zeros (1, L, 1) in the transformer's dtype on `device`, L the ``max_sequence_length``
        default of ``pipe.__call__`` (the text length of a stock call; 226 if it has none).
        """
        length = int(call_default(pipe, "max_sequence_length") or 226)
        dtype = pipe.transformer.dtype
        return {"encoder_hidden_states": torch.zeros(1, length, 1, dtype=dtype, device=device)}

    def encode_video(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        """VAE-encode pixels (1, 3, frames, H, W) in [-1, 1] to latents in the transformer layout.

        Default: channel-first latents (B, C, F, H, W), the VAE's mode normalised as its config says:
        ``(x - latents_mean) / latents_std`` where the config has them (Wan), then ``x * scaling_factor``
        where it has one (HunyuanVideo); in the transformer's dtype. Override for another layout
        (CogVideoX: (B, F, C, H, W)) or a pipeline that normalises otherwise.
        """
        vae = pipe.vae
        latents = vae.encode(video.to(vae.device, vae.dtype)).latent_dist.mode()  # (B, C, F, H, W)
        config = vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape, like = (1, latents.shape[1], 1, 1, 1), dict(device=latents.device, dtype=latents.dtype)
            latents = (latents - torch.tensor(mean, **like).view(shape)) / torch.tensor(std, **like).view(shape)
        factor = getattr(config, "scaling_factor", None)
        if factor is not None:
            latents = latents * factor
        return latents.to(pipe.transformer.dtype)  # (B, C, F, H, W), as the pipeline's latents

    def video_shape(self, pipe: Any, latents: torch.Tensor) -> tuple[int, int, int]:
        """(num_frames, height, width) in pixels that produce latents of this shape.

        Default: channel-first latents (B, C, F, H, W) of a causal video VAE: ``(F - 1) x
        pipe.vae_scale_factor_temporal + 1`` frames, ``H``/``W`` x ``pipe.vae_scale_factor_spatial``.
        """
        frames = (latents.shape[2] - 1) * pipe.vae_scale_factor_temporal + 1
        spatial = pipe.vae_scale_factor_spatial
        return frames, latents.shape[3] * spatial, latents.shape[4] * spatial

    def encode_still(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        """Latents the model trains on for a still photo given as a one-frame video (1, 3, 1, H, W).

        Default: `encode_video`. Override where the transformer needs more latent frames than one
        (CogVideoX 1.5 repeats the first frame up to its temporal patch size).
        """
        return self.encode_video(pipe, video)

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """(height, width) in pixels that a stock ``pipe(...)`` call generates at.

        Default: the ``height`` / ``width`` defaults of ``pipe.__call__``.
        """
        height, width = call_default(pipe, "height"), call_default(pipe, "width")
        if not isinstance(height, int) or not isinstance(width, int):
            raise NotImplementedError(
                f"Expected integer height/width defaults on {type(pipe).__name__}.__call__, but got "
                f"{height!r}/{width!r}. Give the size explicitly, or override {type(self).__name__}.default_size."
            )
        return height, width

    def size_multiple(self, pipe: Any) -> int:
        """The pixel multiple that height and width must be (one video token's side in pixels).

        Default: ``pipe.vae_scale_factor_spatial`` x the transformer config's spatial ``patch_size``
        (an int, or the last of a (t, h, w) tuple).
        """
        patch = getattr(pipe.transformer.config, "patch_size", 1) or 1
        patch = patch[-1] if isinstance(patch, (tuple, list)) else patch
        return int(pipe.vae_scale_factor_spatial) * int(patch)
