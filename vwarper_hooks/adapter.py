"""The Adapter protocol: what the architecture-free core needs to know about one model family.

An adapter replaces the attention processor of each attention layer with one that, when the
core's router asks for it, hands over an `AttentionCall` (RoPE-free Q/K, values, where text and
video tokens sit, how to rotate, how to attend). When the router does not want a layer, the
adapter's processor calls the stock processor unchanged, so outputs stay bit-identical.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class AttentionCall:
    """One attention computation of one layer, as the core sees it.

    Tensors are laid out (batch, heads, tokens, head_dim). `query` and `key` are RoPE-free
    (after QK-norm, before rotary); call `rotate_` before attending. `text_valid` (batch, text
    tokens) bool marks real text keys where the model masks padding out of its attention
    (HunyuanVideo); None: every text key is attended to (CogVideoX, which has no text mask).
    """

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    text: slice
    video: slice
    rotate_: Callable[[torch.Tensor, torch.Tensor], None]
    rope: Callable[[torch.Tensor], torch.Tensor]
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    text_valid: torch.Tensor | None = None

    def default(self) -> torch.Tensor:
        """The stock computation: rotate in place, then attend."""
        self.rotate_(self.query, self.key)
        return self.attend(self.query, self.key, self.value)


@dataclass(frozen=True)
class LayerDefaults:
    """An adapter's default match layer and warp layers (flat indices, inclusive range)."""

    match_layer: int
    warp_layers: tuple[int, int]


#: The paper's choice on CogVideoX-5B (42 layers): match at 12, warp 20-29.
PAPER_DEPTH, PAPER_MATCH_LAYER, PAPER_WARP_LAYERS = 42, 12, (20, 29)


def proportional_layers(depth: int) -> LayerDefaults:
    """The paper's layers scaled to a model of `depth` attention layers (42 -> 12 and 20-29).

    A heuristic for architectures the paper did not study: the same relative depth, rounded.
    """

    def scale(i: int) -> int:
        return min(depth - 1, max(0, round(i * depth / PAPER_DEPTH)))

    lo, hi = (scale(i) for i in PAPER_WARP_LAYERS)
    return LayerDefaults(scale(PAPER_MATCH_LAYER), (lo, max(lo, hi)))


class LayerRouter(Protocol):
    """What an adapter's processor talks to (implemented by the core's session)."""

    def wants(self, layer: int) -> bool:
        """True when the core needs this layer's call now (False: run the stock processor)."""

    def process(self, call: AttentionCall) -> torch.Tensor:
        """Return the attention output (batch, heads, tokens, head_dim) for `call`."""

    def wants_text(self, layer: int) -> bool:
        """True when video->text scores of `layer` are needed (models with a separate text attention)."""

    def observe_text_attention(
        self, layer: int, query_video: torch.Tensor, key_text: torch.Tensor, text_valid: torch.Tensor | None = None
    ) -> None:
        """Receive (B, heads, N, d) video queries and (B, heads, T, d) text keys of a text attention
        (and optionally (B, T) bool `text_valid`, False for padding the model masks out)."""


class Adapter(ABC):
    """Tells the core where things are in one transformer family. Stateless; one per family."""

    #: unique registry name, e.g. ``"cogvideox"``
    name: str = ""
    #: diffusers pipeline argument order of the latent tensor, for documentation and checks
    latent_layout: str = "BFCHW"

    @abstractmethod
    def matches(self, transformer: nn.Module) -> bool:
        """True when this adapter understands `transformer`."""

    @abstractmethod
    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        """The attention modules in flat-index order (index = the layer number users name)."""

    def default_layers(self, depth: int) -> LayerDefaults | None:
        """Match / warp layers used when the user's `WarpConfig` does not set them.

        None (the default): `WarpConfig`'s own defaults, the paper's 12 and 20-29 (CogVideoX).
        """
        return None

    def text_positions(self, positions: slice, ids_length: int, kwargs: dict[str, Any]) -> slice:
        """Map the subject token's place in the tokenizer's ``input_ids`` to the transformer's text tokens.

        :param positions: where the token's ids sit in the ``input_ids`` row the pipeline encoded.
        :param ids_length: length of that row.
        :param kwargs: a generation forward call's kwargs.
        Default: the same positions (the pipeline feeds every encoder output position to the transformer).
        """
        return positions

    def problems(self, transformer: nn.Module) -> list[str]:
        """Reasons this model cannot be injected as configured (fused QKV, ...). Empty: fine."""
        return []

    def pipeline_problems(self, pipe: Any) -> list[str]:
        """Reasons the pipeline around the model cannot be injected (pipeline-level modes). Empty: fine."""
        return []

    @abstractmethod
    def install(self, transformer: nn.Module, router: LayerRouter) -> Callable[[], None]:
        """Route every attention layer through `router`; return a function that undoes it."""

    @abstractmethod
    def is_installed(self, transformer: nn.Module) -> int:
        """How many of our processors/hooks are on `transformer` (0 after cleanup)."""

    def timestep(self, kwargs: dict[str, Any]) -> torch.Tensor:
        """The timestep of one transformer forward call, from its arguments bound by name.

        Default: ``kwargs["timestep"]`` (every diffusers video transformer so far).
        """
        return kwargs["timestep"]

    def latents(self, kwargs: dict[str, Any]) -> torch.Tensor:
        """The video latents of one transformer forward call, from its arguments bound by name.

        Default: ``kwargs["hidden_states"]``.
        """
        return kwargs["hidden_states"]

    @abstractmethod
    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        """(frames, height, width) of the video-token grid for latents in the transformer layout."""

    #: True when video->text scores come from a separate cross-attention (Wan's ``attn2``) rather
    #: than from the layers in `attention_layers`: the core then routes those only where it needs Q/K/V
    text_attention_outside: bool = False

    #: True when the pipeline runs classifier-free guidance as one batch [uncond, cond] (CogVideoX);
    #: False when it makes separate transformer calls per branch (HunyuanVideo true CFG, Wan)
    cfg_in_one_batch: bool = True

    #: forward kwargs that carry one row per generation sample (besides the text): the reference
    #: branch keeps only its first rows (e.g. CogVideoX 1.5's ``ofs``, HunyuanVideo's ``guidance``)
    batched_kwargs: tuple[str, ...] = ()

    def reference_kwargs(
        self, kwargs: dict[str, Any], latents: torch.Tensor, text: dict[str, torch.Tensor], timestep: torch.Tensor
    ) -> dict[str, Any]:
        """Forward kwargs for a reference-branch call (batch 1) derived from a generation call's kwargs.

        :param text: the text conditioning from `encode_text`, merged over the generation's.
        Default: the generation's kwargs with the reference latents, timestep (in the generation
        timestep's dtype) and text, and `batched_kwargs` cut to the reference's batch.
        """
        ref = {**kwargs, **text}
        generation_t = kwargs.get("timestep")
        if isinstance(generation_t, torch.Tensor):
            timestep = timestep.to(generation_t.dtype)
        ref.update(hidden_states=latents, timestep=timestep, return_dict=False)
        for name in self.batched_kwargs:
            if ref.get(name) is not None:
                ref[name] = ref[name][: latents.shape[0]]
        return ref

    def encode_text(self, pipe: Any, prompt: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Text conditioning of `prompt` as transformer forward kwargs (batch 1, no CFG).

        :param kwargs: a generation forward call's kwargs (to match its text length, dtype, device).
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

    @abstractmethod
    def encode_video(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        """VAE-encode pixels (1, 3, frames, H, W) in [-1, 1] to latents in the transformer layout."""

    @abstractmethod
    def video_shape(self, pipe: Any, latents: torch.Tensor) -> tuple[int, int, int]:
        """(num_frames, height, width) in pixels that produce latents of this shape."""

