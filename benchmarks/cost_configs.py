"""Shapes and meta-device pipelines for `cost.py` (nothing is downloaded, nothing allocated): the `Shape`
record, the tiny shapes of the test suite (one per family of the family list), and the meta shims. The
released models' configs and their shapes are in `cost_models.py`.

Three shims, none of which changes a counted FLOP: the scheduler's arithmetic is stubbed (stock
schedulers index tables with timestep values); transformers' "can the attention mask be skipped?"
checks (which read mask values) answer "no", so the mask is always built; and, for speed only, layer
norm gets a shape-only meta kernel (torch's own runs a Python decomposition, ~40% of the time here).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass(frozen=True)
class Shape:
    """One model at one generation size: how to build its meta pipeline and call it."""

    name: str
    build: Callable[[], Any]
    call: dict[str, Any]  # pipeline kwargs (size, frames, guidance, text length, ...)
    steps: int = 50  # the run the cost model composes
    warp_steps: tuple[int, int] = (3, 19)  # the paper's window for that run
    layers: dict[str, Any] = field(default_factory=dict)  # explicit WarpConfig layers (default: the adapter's)
    note: str = ""
    family: str = ""  # the built-in family (tiny shapes: skipped where the installed diffusers lacks it)


def _meta(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module` in `dtype`, but the modules it keeps in float32 (as `from_pretrained(torch_dtype=...)` does)."""
    module.to(dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, sub in module.named_modules():
        if dtype != torch.float32 and any(k in name.split(".") for k in keep):
            sub.to(torch.float32)
    return module.eval()


#: fewer layers than the tiny pipelines' own for the meta runs (a few seconds per layer of the depth): 4 attention
#: layers for the first families (HunyuanVideo: 1 dual-stream + 3 single-stream blocks), 2 for every later one
#: (match and warp layer 1, every kind of step still occurs), to keep the suite's time
META_LAYERS: dict[str, dict[str, int]] = {
    "cogvideox": dict(num_layers=4),
    "wan": dict(num_layers=4),
    "hunyuan_video": dict(num_layers=1, num_single_layers=3),
}
TWO = dict(num_layers=2)


#: families whose stock pipeline cannot run on the meta device: Wan 2.2's two-expert loop reads each step's
#: timestep on the host to pick its expert (its FLOPs per step are Wan's: one expert per step)
NOT_ON_META = ("wan22",)


def tiny_shapes() -> list[Shape]:
    """The test suite's configs, one per family of the family list: tiny random pipelines on meta, a 6-step
    run with a scaled window (every kind of step occurs, one of them twice), so that real calls of that
    length can be counted end to end. Layers: each adapter's defaults at the meta depth."""
    from vwarper_hooks.porting.families import TINY_FAMILIES
    from vwarper_hooks.testing import TINY_FRAMES, TINY_HEIGHT, TINY_TEXT_LEN, TINY_WIDTH, tiny_pipeline

    call = dict(height=TINY_HEIGHT, width=TINY_WIDTH, num_frames=TINY_FRAMES, guidance_scale=6.0,
                max_sequence_length=TINY_TEXT_LEN)
    return [Shape(f"tiny {family}", functools.partial(tiny_pipeline, family, **META_LAYERS.get(family, TWO)), call,
                  steps=6, warp_steps=(2, 4), family=family)
            for family in TINY_FAMILIES if family not in NOT_ON_META]


def stub_scheduler_step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> tuple:
    """The scheduler's arithmetic, stubbed on meta (it indexes tables with timestep values; no FLOPs)."""
    return (sample,)


def _meta_layer_norm(x: torch.Tensor, normalized_shape: list[int], weight: Any, bias: Any, eps: float) -> tuple:
    """`aten.native_layer_norm` on meta: the output and the statistics' shapes, nothing computed."""
    axis = x.dim() - len(normalized_shape)
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    stats = x.new_empty((*x.shape[:axis], *[1] * len(normalized_shape)), dtype=dtype)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


def _mask_checks() -> list[tuple[Any, str]]:
    """(owner, attribute) of each transformers check that reads mask values to skip the mask: module
    functions in `masking_utils` (transformers >= 4.53), the `AttentionMaskConverter` static method before."""
    found = []
    for module, owner_name in (("transformers.masking_utils", None),
                               ("transformers.modeling_attn_mask_utils", "AttentionMaskConverter")):
        try:
            owner = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        owner = getattr(owner, owner_name) if owner_name else owner
        found += [(owner, n) for n in ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa")
                  if n in vars(owner)]
    return found


class _TextReorderOnMeta(TorchDispatchMode):
    """Shape-only answers for the two value reads of HunyuanVideo 1.5's forward on meta (text-to-video): the
    result of ``torch.all(image_embeds == 0)`` read as a bool is True (the vision tokens are zeros), and a
    boolean mask selects every row while its negation selects none, so each valid/padding pair of the text
    reordering keeps the total length the real masks give (the order differs; no FLOPs either way). Any
    other value read on meta still fails."""

    def __init__(self) -> None:
        super().__init__()
        self._all: dict[int, torch.Tensor] = {}  # results of aten.all (held: their ids stay theirs)
        self._negated: dict[int, torch.Tensor] = {}  # results of a boolean negation

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        aten = torch.ops.aten
        if func is aten._local_scalar_dense.default and id(args[0]) in self._all:
            return True
        if func is aten.index.Tensor and _shape_only(args[0]) and len(args[1]) == 1:
            x, mask = args[0], args[1][0]
            if mask is not None and mask.dtype == torch.bool:
                rows = 0 if id(mask) in self._negated else mask.numel()
                return x.new_empty((rows, *x.shape[mask.dim():]))  # (rows, ...)
        out = func(*args, **(kwargs or {}))
        if func is aten.all.default:
            self._all[id(out)] = out
        elif func in (aten.bitwise_not.default, aten.logical_not.default) and out.dtype == torch.bool:
            self._negated[id(out)] = out
        return out


def _shape_only(t: torch.Tensor) -> bool:
    """A tensor without values: on meta, or fake (`cost_memory`'s FakeTensorMode)."""
    return t.is_meta or isinstance(t, FakeTensor)


def _reordering_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward`, inside `_TextReorderOnMeta` when its latents have no values (meta or fake)."""

    @functools.wraps(forward)
    def on_meta(self: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not _shape_only(hidden_states):
            return forward(self, hidden_states, *args, **kwargs)
        with _TextReorderOnMeta():
            return forward(self, hidden_states, *args, **kwargs)

    return on_meta


@contextmanager
def reorder_shim() -> Iterator[None]:
    """For the block: HunyuanVideo 1.5's forward runs its text reordering in `_TextReorderOnMeta` when its
    inputs have no values (the installed diffusers' class, if it has one)."""
    model = getattr(importlib.import_module("diffusers"), "HunyuanVideo15Transformer3DModel", None)
    if model is None:
        yield
        return
    forward = vars(model)["forward"]
    model.forward = _reordering_forward(forward)
    try:
        yield
    finally:
        model.forward = forward


@contextmanager
def meta_shims() -> Iterator[None]:
    """For the block: transformers' mask-skipping checks (they read mask values) say "keep the mask", layer
    norm has a fast meta kernel, and HunyuanVideo 1.5's text reordering gets shape-only answers on meta
    (`reorder_shim`; no FLOPs either way)."""
    checks = _mask_checks()
    saved = [(owner, n, vars(owner)[n]) for owner, n in checks]
    kernels = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
            kernels.impl("native_layer_norm", _meta_layer_norm, "Meta")
        for owner, n in checks:
            setattr(owner, n, staticmethod(_keep_mask) if isinstance(owner, type) else _keep_mask)
        with reorder_shim():
            yield
    finally:
        kernels._destroy()  # torch's own meta kernel is back
        for owner, n, fn in saved:
            setattr(owner, n, fn)


def _keep_mask(*args: Any, **kwargs: Any) -> bool:
    return False


def meta_pipeline(shape: Shape) -> Any:
    """`shape`'s pipeline on the meta device, its scheduler's arithmetic stubbed."""
    pipe = shape.build()
    pipe.to("meta")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.step = stub_scheduler_step
    return pipe
