"""The Adapter protocol: what the architecture-free core needs to know about one model family.

An adapter replaces the attention processor of each attention layer with one that, when the
core's router asks for it, hands over an `AttentionCall` (RoPE-free Q/K, values, where text and
video tokens sit, how to rotate, how to attend). When the router does not want a layer, the
adapter's processor calls the stock processor unchanged, so outputs stay bit-identical
(`vwarper_hooks.contract.processors.RoutedProcessor`).

Every rule of a model family lives in its adapter: the core (inject, the session, the trainer,
the analysis) asks the adapter and names no family. Five methods are required; everything else
has a default, documented on the method, that fits diffusers' conventions.
"""

from __future__ import annotations

import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import PAPER_DEPTH, PAPER_MATCH_LAYER, PAPER_WARP_LAYERS
from .calls import AttentionCall, LayerRouter  # noqa: F401  (plugins import both from this module too)
from .processors import RoutedProcessor, processor_problems, swap_processors


def base_model(transformer: nn.Module) -> nn.Module:
    """The model itself: ``torch.compile(transformer)`` wraps it (``_orig_mod``); adapters, processors
    and LoRA work on the model inside, while calls and forward hooks go through the wrapper."""
    return getattr(transformer, "_orig_mod", transformer)


@dataclass(frozen=True)
class LayerDefaults:
    """An adapter's default match layer and warp layers (flat indices, inclusive range)."""

    match_layer: int
    warp_layers: tuple[int, int]


def proportional_layers(depth: int) -> LayerDefaults:
    """The paper's layers (`config.PAPER_*`) scaled to a model of `depth` attention layers (42 -> 12 and 20-29).

    A heuristic for architectures the paper did not study: the same relative depth, rounded.
    """

    def scale(i: int) -> int:
        return min(depth - 1, max(0, round(i * depth / PAPER_DEPTH)))

    lo, hi = (scale(i) for i in PAPER_WARP_LAYERS)
    return LayerDefaults(scale(PAPER_MATCH_LAYER), (lo, max(lo, hi)))


ProcessorGroup = tuple[list[nn.Module], type[RoutedProcessor]]


class Adapter(ABC):
    """Tells the core where things are in one transformer family. Stateless; one per family.

    Required: `matches`, `attention_layers`, `token_grid`, `encode_video`, `video_shape`, and a
    `processor` class (or your own `install` and `is_installed`). The rest has defaults.
    """

    #: unique registry name, e.g. ``"cogvideox"``
    name: str = ""
    #: the `RoutedProcessor` subclass the default `install` puts on every layer of `attention_layers`
    processor: type[RoutedProcessor] | None = None
    #: class name of the stock diffusers processor ours replace; the default `problems` refuses any
    #: other processor on those layers ("" : any processor is accepted)
    stock_processor: str = ""
    #: True when video->text scores come from a separate cross-attention (Wan's ``attn2``) rather
    #: than from the layers in `attention_layers`: the core then routes those only where it needs Q/K/V
    text_attention_outside: bool = False
    #: True when the pipeline runs classifier-free guidance as one batch [uncond, cond] (CogVideoX);
    #: False when it makes separate transformer calls per branch (HunyuanVideo true CFG, Wan)
    cfg_in_one_batch: bool = True
    #: forward kwargs that carry one row per generation sample (besides the text): the reference
    #: branch keeps only its first rows (e.g. CogVideoX 1.5's ``ofs``, HunyuanVideo's ``guidance``)
    batched_kwargs: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adopt_old_signature(cls, "latents")  # 0.1's timestep(args, kwargs) is simply no longer called

    # ------------------------------------------------------------------ the model's layers
    @abstractmethod
    def matches(self, transformer: nn.Module) -> bool:
        """True when this adapter understands `transformer`."""

    @abstractmethod
    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        """The attention modules in flat-index order (index = the layer number users name)."""

    def default_layers(self, depth: int) -> LayerDefaults | None:
        """Match / warp layers used when the user's `WarpConfig` does not set them.

        Default: None, i.e. `WarpConfig`'s own defaults, the paper's 12 and 20-29 (CogVideoX).
        `proportional_layers(depth)` scales them to another depth.
        """
        return None

    def processor_groups(self, transformer: nn.Module) -> list[ProcessorGroup]:
        """(modules, processor class) pairs that `install` swaps, `is_installed` counts and `problems` checks.

        Default: ``[(attention_layers, processor)]``; none without a `processor`. A family with a
        second kind of attention to observe adds a pair (Wan: its cross-attentions, own processor).
        """
        return [] if self.processor is None else [(self.attention_layers(transformer), self.processor)]

    def _groups_or_raise(self, transformer: nn.Module, method: str) -> list[ProcessorGroup]:
        groups = self.processor_groups(transformer)
        if not groups:
            raise NotImplementedError(
                f"Expected {type(self).__name__}.processor (a RoutedProcessor subclass) for the default "
                f"{method}(), but got None. Set it, or override install() and is_installed()."
            )
        return groups

    def install(self, transformer: nn.Module, router: LayerRouter) -> Callable[[], None]:
        """Route the layers through `router`; return a function that undoes it.

        Default: ``processor(original, i, router)`` on module i of each `processor_groups` pair, all
        or nothing (if one swap fails, the ones made are undone before the error propagates).
        """
        undos: list[Callable[[], None]] = []

        def uninstall() -> None:
            for undo in reversed(undos):
                undo()

        try:
            for modules, cls in self._groups_or_raise(transformer, "install"):
                undos.append(swap_processors(modules, lambda i, original, cls=cls: cls(original, i, router)))
        except BaseException:
            uninstall()
            raise
        return uninstall

    def is_installed(self, transformer: nn.Module) -> int:
        """How many of our processors/hooks are on `transformer` (0 after cleanup).

        Default: the modules of `processor_groups` whose processor is one of ours.
        """
        groups = self._groups_or_raise(transformer, "is_installed")
        ours = tuple(cls for _, cls in groups)
        return sum(isinstance(m.processor, ours) for modules, _ in groups for m in modules)

    def problems(self, transformer: nn.Module) -> list[str]:
        """Reasons this model cannot be injected as configured. Empty: fine.

        Default: `processor_problems` on every `processor_groups` module: fused Q/K/V, or a processor
        that is neither `stock_processor` (by class name) nor ours. Nothing without a `processor`.
        """
        groups = self.processor_groups(transformer)
        ours = tuple(cls for _, cls in groups)
        for modules, _ in groups:
            found = processor_problems(modules, self.stock_processor, ours)
            if found:
                return found
        return []

    def pipeline_problems(self, pipe: Any) -> list[str]:
        """Reasons the pipeline around the model cannot be injected (pipeline-level modes).

        Default: none (empty list).
        """
        return []

    def expert_boundary(self, pipe: Any) -> float | None:
        """The timestep below which the pipeline calls its second expert (``pipe.transformer_2``), or None for
        a pipeline with one transformer (`contract.experts` derives which expert runs a timestep from it).

        Default: None.
        """
        return None

    # ------------------------------------------------------------------ one forward call
    def latents(self, kwargs: dict[str, Any]) -> torch.Tensor:
        """The video latents of one transformer forward call, from its arguments bound by name.

        Default: ``kwargs["hidden_states"]``.
        """
        return kwargs["hidden_states"]

    @abstractmethod
    def token_grid(self, transformer: nn.Module, latents: torch.Tensor) -> tuple[int, int, int]:
        """(frames, height, width) of the video-token grid for latents in the transformer layout."""

    def text_positions(self, positions: slice, ids_length: int, kwargs: dict[str, Any]) -> slice:
        """Map the subject token's place in the tokenizer's ``input_ids`` to the transformer's text tokens.

        :param positions: where the token's ids sit in the ``input_ids`` row the pipeline encoded.
        :param ids_length: length of that row.
        :param kwargs: a generation forward call's kwargs.
        Default: the same positions (the pipeline feeds every encoder output position to the transformer).
        """
        return positions

    def reference_kwargs(
        self, kwargs: dict[str, Any], latents: torch.Tensor, text: dict[str, torch.Tensor], timestep: torch.Tensor
    ) -> dict[str, Any]:
        """Forward kwargs for a reference-branch call derived from a generation call's kwargs.

        :param latents: (k, ...) the reference latents: one sample per reference photo.
        :param text: the text conditioning from `encode_text` (batch 1), merged over the generation's.
        Default: the generation's kwargs with the reference latents, the timestep (in the generation
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
        ref.update(hidden_states=latents, timestep=expanded(timestep.reshape(-1)), return_dict=False)
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
        Default: ``hidden_states``, ``timestep``, the text and ``return_dict=False``. Add what the
        pipeline would compute besides (CogVideoX: its 3D RoPE; HunyuanVideo: the guidance embedding).
        """
        batch = latents.shape[0]
        text = {k: v.expand(batch, *v.shape[1:]) if torch.is_tensor(v) else v for k, v in text.items()}
        return {"hidden_states": latents, "timestep": timestep, **text, "return_dict": False}

    # ------------------------------------------------------------------ the pipeline around it
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

    @abstractmethod
    def encode_video(self, pipe: Any, video: torch.Tensor) -> torch.Tensor:
        """VAE-encode pixels (1, 3, frames, H, W) in [-1, 1] to latents in the transformer layout."""

    @abstractmethod
    def video_shape(self, pipe: Any, latents: torch.Tensor) -> tuple[int, int, int]:
        """(num_frames, height, width) in pixels that produce latents of this shape."""

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


def call_default(pipe: Any, name: str) -> Any:
    """The default of argument `name` of ``pipe.__call__`` (None when it has no such argument)."""
    try:
        parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _adopt_old_signature(cls: type, method: str) -> None:
    """Serve a 0.1-style ``latents(self, args, kwargs)`` override through the
    new ``(self, kwargs)`` signature, with a DeprecationWarning (the core passes kwargs bound by name)."""
    old = cls.__dict__.get(method)
    if old is None or list(inspect.signature(old).parameters)[1:] != ["args", "kwargs"]:
        return
    warnings.warn(
        f"{cls.__qualname__}.{method}(self, args, kwargs) is deprecated: the core now passes the forward call's "
        f"arguments bound by name. Define {method}(self, kwargs); the old form will stop working in a later release.",
        DeprecationWarning,
        stacklevel=3,
    )

    def adopted(self: Adapter, kwargs: dict[str, Any]) -> Any:
        return old(self, (), kwargs)

    adopted.__doc__, adopted.__qualname__ = old.__doc__, old.__qualname__
    setattr(cls, method, adopted)
