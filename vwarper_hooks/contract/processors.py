"""Helpers for adapters' attention processors: a `RoutedProcessor` base that asks the core's router
before doing anything, all-or-nothing installation, a check of what they replace, and attention
exactly as the stock diffusers processor computes it (the pieces live in `joint_attention`:
`joint_qkv`, `stock_attend`, `merge_heads`, `rotate_span`; re-exported here)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .joint_attention import JointQKV, QKNorm, heads, joint_qkv, merge_heads, project, rotate_span, stock_attend
from .sharding import TokenShards

__all__ = [
    "JointQKV", "QKNorm", "RoutedProcessor",
    "attend_with_lse", "heads", "joint_qkv", "lse_kernel", "merge_heads",
    "processor_problems", "project", "rotate_span", "stock_attend", "swap_processors",
]


def _kept_on_original(name: str) -> property:
    """An attribute diffusers sets on every processor that has it, kept on the original processor where it has
    one, so the setting outlives the injection; else on ours (CogVideoX's stock processor has neither)."""
    own = f"_own{name}"

    def get(self: RoutedProcessor) -> Any:
        if hasattr(self.original, name):
            return getattr(self.original, name)
        return self.__dict__.get(own)

    def put(self: RoutedProcessor, value: Any) -> None:
        if hasattr(self.original, name):
            setattr(self.original, name, value)
        else:
            self.__dict__[own] = value

    return property(get, put)


class RoutedProcessor:
    """Base of an adapter's attention processor: the stock processor unless the core wants the layer.

    A subclass writes only its own arithmetic, `routed` (project, QK-normalise, hand an
    `AttentionCall` to ``self.router``, project out), and optionally `asks` and `wanted`. Calling
    the processor runs ``self.routed(attn, *args, **kwargs)`` when ``self.wanted(*args, **kwargs)``
    is true, else ``self.original(attn, *args, **kwargs)`` with the arguments exactly as received, so
    layers the core does not want stay bit-identical to stock.

    torch.compile: the core's router sets ``self.active`` (from `asks`) whenever its route changes,
    outside any compiled code, so what a compiled block reads per call is one boolean flag, not the
    layer index or the router's state (no recompile per layer or per step). `routed` runs eagerly
    behind one graph break (``torch.compiler.disable``); a stock layer's block stays compiled whole.

    diffusers' `Attention.forward` passes the processor only the keyword arguments its
    ``__call__`` names (it reads ``inspect.signature(processor.__call__)`` and silently drops the
    rest, e.g. ``image_rotary_emb``). So every subclass gets a ``__call__`` whose signature is that
    of its `routed` method (see `__init_subclass__`); a subclass that writes ``__call__`` itself
    keeps its own.
    """

    #: whether the core wants this layer now; kept up to date by a router that has ``register``
    active = False
    #: whether `routed` tells the router it enters its layer (``entering``, where the lockstep reference
    #: branch runs or pauses): once per layer, by the routed attention; False for a second attention of the
    #: same layer that only shows the core its text scores (a text cross-attention)
    enters_layer = True
    #: whether the stock processor runs right under diffusers' context parallelism (it attends through
    #: diffusers' dispatch with the parallel config: Wan); False: under it, this processor computes every
    #: layer itself, the unwanted ones without the router (CogVideoX's stock processor calls SDPA itself and
    #: would attend to this rank's tokens only)
    stock_runs_parallel = True

    def __init__(self, original: Any, layer: int, router: Any) -> None:
        #: the processor this one replaced (restored on uninstall, called for unwanted layers)
        self.original = original
        #: flat layer index (`Adapter.attention_layers`)
        self.layer = layer
        #: the core's `LayerRouter`
        self.router = router
        #: True when the router keeps `active` up to date (`LayerRouter.keeps_flags`); else asked per call.
        #: A duck-typed router without the base class keeps flags when it has ``register``.
        register = getattr(router, "register", None)
        self.managed = bool(getattr(router, "keeps_flags", callable(register)))
        if callable(register):
            register(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" not in cls.__dict__:
            cls.__call__ = _dispatch_named_like(cls.routed, cls.__qualname__)
        cls._routed_eagerly = _eager(_entering_first(cls.routed))
        cls._stock_eagerly = _eager(cls.routed)  # `process` then attends as stock (`stock_runs_parallel`)

    def asks(self) -> bool:
        """The router's answer for this layer now (evaluated by the router when its route changes).

        Default: ``self.router.wants(self.layer)``; an attention that only shows the core text scores
        asks ``self.router.wants_text(self.layer)``.
        """
        return self.router.wants(self.layer)

    def wanted(self, *args: Any, **kwargs: Any) -> bool:
        """Whether this call goes through `routed` (arguments as the processor got them, after ``attn``).

        Default: ``self.active`` (or `asks` for a router that does not manage the flag). A subclass
        adds conditions on the call's own arguments, e.g. ``encoder_hidden_states is None and ...``.
        """
        return self.active if self.managed else self.asks()

    #: diffusers' attention backend (``transformer.set_attention_backend`` sets it on every processor that has
    #: the attribute) and parallel config (``enable_parallelism`` likewise): see `_kept_on_original`
    _attention_backend = _kept_on_original("_attention_backend")
    _parallel_config = _kept_on_original("_parallel_config")

    @property
    def shards(self) -> TokenShards | None:
        """This layer's context-parallel split of the tokens (None: one rank holds them all)."""
        return TokenShards.of_config(self._parallel_config)

    def process(self, call: Any) -> torch.Tensor:
        """``self.router.process(call)`` (``call.default()`` for a layer the router does not want: a stock
        layer `routed` computes under context parallelism). Under context parallelism the core gets every
        token of this rank's heads (`TokenShards.head_call`), and its output comes back on this rank's tokens."""
        core = self.router.process if RoutedProcessor.wanted(self) else _stock
        shards = self.shards
        if shards is None:
            return core(call)
        return shards.token_output(call, core(shards.head_call(call)))

    def attend(self, attention_mask: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
        """``attend(q, k, v)`` for an `AttentionCall`: diffusers' attention dispatch with this layer's
        backend and `attention_mask` (`joint_attention.stock_attend`)."""
        return stock_attend(self, attention_mask)

    def routed(self, attn: Any, *args: Any, **kwargs: Any) -> Any:
        """The stock processor's arithmetic with ``self.router`` in the middle (subclasses write it)."""
        raise NotImplementedError(f"{type(self).__name__} must define routed(attn, ...)")

    def _routed_eagerly(self, attn: Any, *args: Any, **kwargs: Any) -> Any:  # replaced per subclass
        return self.routed(attn, *args, **kwargs)

    def _stock_eagerly(self, attn: Any, *args: Any, **kwargs: Any) -> Any:  # replaced per subclass
        return self.routed(attn, *args, **kwargs)

    def __call__(self, attn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.wanted(*args, **kwargs):
            return self._routed_eagerly(attn, *args, **kwargs)
        if not self.stock_runs_parallel and self.shards is not None:
            return self._stock_eagerly(attn, *args, **kwargs)
        return self.original(attn, *args, **kwargs)


def _stock(call: Any) -> torch.Tensor:
    return call.default()


def _entering_first(routed: Callable[..., Any]) -> Callable[..., Any]:
    """`routed`, after telling a router that has ``entering`` which layer is about to compute its Q/K/V
    (the core's lockstep reference branch runs or pauses there; see `vwarper_hooks.fine.lockstep`)."""

    def enter_then_route(self: RoutedProcessor, attn: Any, *args: Any, **kwargs: Any) -> Any:
        entering = getattr(self.router, "entering", None) if self.enters_layer else None
        if entering is not None:
            entering(self.layer)
        return routed(self, attn, *args, **kwargs)

    functools.update_wrapper(enter_then_route, routed)
    return enter_then_route


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, never traced by torch.compile: its Python state changes every step (one graph break)."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return fn if disable is None else disable(fn)


def _dispatch_named_like(routed: Callable[..., Any], owner: str) -> Callable[..., Any]:
    """`RoutedProcessor.__call__` for one subclass, showing `routed`'s signature to diffusers."""
    dispatch = RoutedProcessor.__call__

    def __call__(self: RoutedProcessor, attn: Any, *args: Any, **kwargs: Any) -> Any:
        return dispatch(self, attn, *args, **kwargs)

    __call__.__signature__ = inspect.signature(routed)  # type: ignore[attr-defined]
    __call__.__qualname__ = f"{owner}.__call__"
    __call__.__doc__ = f"Route through `{owner}.routed` when wanted, else the original processor."
    return __call__


def swap_processors(modules: list[nn.Module], make: Callable[[int, Any], Any]) -> Callable[[], None]:
    """Give ``modules[i]`` the processor ``make(i, original)``; returns the function that puts the
    originals back. All or nothing: if one swap fails, those already made are undone first."""
    originals = [module.processor for module in modules]

    def undo(count: int = len(modules)) -> None:
        for module, original in zip(modules[:count], originals[:count], strict=True):
            module.set_processor(original)

    done = 0
    try:
        for i, module in enumerate(modules):
            module.set_processor(make(i, originals[i]))
            done = i + 1
    except BaseException:
        undo(done)
        raise
    return undo


def processor_problems(modules: list[nn.Module], stock: str, ours: tuple[type, ...]) -> list[str]:
    """Why `modules` cannot take our processors: fused Q/K/V, or a processor that is neither the
    stock one (by class name `stock`; "" accepts any) nor one of `ours` (an open injection, reported by inject)."""
    for i, attn in enumerate(modules):
        if getattr(attn, "fused_projections", False):
            return [
                f"Expected unfused Q/K/V projections, but layer {i} has fused ones. "
                "Call transformer.unfuse_qkv_projections() before inject()."
            ]
        processor = attn.processor
        if stock and not isinstance(processor, ours) and type(processor).__name__ != stock:
            return [
                f"Expected {stock} on every attention, but layer {i} uses {type(processor).__name__}. "
                f"Restore it (transformer.set_attn_processor({stock}()) or reload the transformer)."
            ]
    return []


def lse_kernel(q: torch.Tensor, masked: bool) -> str:
    """Which fused kernel `attend_with_lse` uses for `q` (and a key mask or not).

    "flash_cpu" on the CPU; "flash" on CUDA for half precision without a mask and head_dim <= 256 (the
    kernel stock SDPA picks there, faster than the memory-efficient one); "efficient" elsewhere (float32,
    a key mask, the meta device, where the FLOP counter sees it).
    """
    if q.device.type == "cpu":
        return "flash_cpu"
    if q.device.type == "cuda" and not masked and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        return "flash"
    return "efficient"


def attend_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and each query's log-sum-exp over the keys, from one fused kernel (`lse_kernel`).

    Tensors are (batch, heads, tokens, head_dim); `keep` is a (batch, 1, 1, keys) bool key mask or
    None. The fused kernels return the log-sum-exp they compute anyway, so the joint-softmax
    foreground score costs no second attention pass. A kernel that refuses the inputs falls back to
    the math path plus a streamed log-sum-exp (one more Q K^T).
    """
    bias = None if keep is None else torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(
        ~keep.to(q.device), float("-inf")
    )
    n = q.shape[2]
    kernel = lse_kernel(q, keep is not None)
    try:
        if kernel == "flash_cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias)
        elif kernel == "flash":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[:2]
        else:
            if bias is not None:
                bias = bias.expand(q.shape[0], q.shape[1], n, k.shape[2])
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[:2]
        return out, lse[..., :n].float()
    except RuntimeError:  # pragma: no cover - a backend without these kernels
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        scale = q.shape[-1] ** -0.5
        lse = torch.cat([
            torch.logsumexp((q[:, :, i : i + 1024] @ k.transpose(-1, -2) * scale).float()
                            + (0 if bias is None else bias.float()), dim=-1)
            for i in range(0, n, 1024)
        ], dim=2)
        return out, lse
