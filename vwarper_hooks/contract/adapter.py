"""The Adapter protocol: what the architecture-free core needs to know about one model family.

An adapter replaces the attention processor of each attention layer with one that, when the
core's router asks for it, hands over an `AttentionCall` (RoPE-free Q/K, values, where text and
video tokens sit, how to rotate, how to attend). When the router does not want a layer, the
adapter's processor calls the stock processor unchanged, so outputs stay bit-identical
(`vwarper_hooks.contract.processors.RoutedProcessor`).

Every rule of a model family lives in its adapter: the core (inject, the session, the trainer,
the analysis) asks the adapter and names no family. Three methods are required; everything else
has a default, documented on the method, that fits diffusers' conventions (the methods facing the
pipeline around the transformer, text, VAE and sizes, are in `adapter_pipeline.PipelineDefaults`).
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
from .adapter_pipeline import PipelineDefaults, call_default  # noqa: F401 - call_default: re-exported
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


class Adapter(PipelineDefaults, ABC):
    """Tells the core where things are in one transformer family. Stateless; one per family.

    Required: `matches`, `attention_layers`, `token_grid`, and a `processor` class (or your own
    `install` and `is_installed`). The rest has defaults; those of `encode_video` and `video_shape`
    assume channel-first latents (B, C, F, H, W) (`PipelineDefaults`).
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
    #: True when the transformer takes input channels beside the latents (in_channels != out_channels) that
    #: `with_latents` builds for the reference branch (HunyuanVideo 1.5's text-to-video model: zero conditioning
    #: latents and mask); False: such a transformer is an image-to-video model, refused by `inject`
    conditioning_channels: bool = False
    #: forward kwargs besides ``encoder_hidden_states`` whose tokens join the text the attention layers see
    #: (HunyuanVideo 1.5: the glyph and vision tokens); the conformance kit counts them into the text span
    extra_text_kwargs: tuple[str, ...] = ()
    #: forward kwargs that carry one row per generation sample (besides the text): the reference
    #: branch keeps only its first rows (e.g. CogVideoX 1.5's ``ofs``, HunyuanVideo's ``guidance``)
    batched_kwargs: tuple[str, ...] = ()
    #: True when the adapter's processors run under diffusers' context parallelism (``enable_parallelism``
    #: with a ``ContextParallelConfig``): its routed attention is video-only, it hands calls to the core
    #: through `RoutedProcessor.process`, and it gathers its rotary tables by token (`contract.sharding`)
    context_parallel: bool = False

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

    def enable_context_parallel(self, transformer: nn.Module, config: Any) -> None:
        """Split each video's tokens over the ranks of `config` (a diffusers ``ContextParallelConfig``), as this
        family runs under V-Warper. Default: diffusers' own ``enable_parallelism`` with the model's plan (Wan);
        an adapter whose model has no plan in diffusers brings its own (CogVideoX). Only called where
        `context_parallel` is True."""
        transformer.enable_parallelism(config=config)

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

    def with_latents(self, kwargs: dict[str, Any], latents: torch.Tensor) -> dict[str, Any]:
        """Forward kwargs `kwargs` with other `latents` (in the layout `latents` returns): the inverse of `latents`.

        Default: ``kwargs`` with ``hidden_states=latents``. Override where the forward input is not the latents
        themselves (packed tokens; extra conditioning channels beside them).
        """
        return {**kwargs, "hidden_states": latents}

    def model_output(self, output: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The transformer's prediction for a forward call with `kwargs`, in the layout of `latents(kwargs)`
        (the core steps its own latents with it: the reference inversion, the training loss).

        Default: ``output`` as the transformer returns it.
        """
        return output

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
