"""The subject's LoRA: which projections get it (K, V, O of every attention layer, never Q), its
diffusers-format keys and metadata, and `peft_lora`, which adds a peft adapter for a ``with`` block.

The LoRA goes in through diffusers' `load_lora_adapter` (peft underneath) under a unique adapter
name. On exit it is removed so that no peft layer stays behind: when the transformer had no
LoRA before, `unload_lora()` swaps every peft wrapper back for its original `nn.Linear` (the
very same module object, so outputs are bit-identical); when the user had adapters of their
own, only ours is deleted and each layer's previous active adapters are restored. Parameter
``requires_grad`` flags, which peft changes on injection, are restored too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import SubjectError
from ..plugins import get_adapter

logger = logging.getLogger(__name__)

#: The projections of every attention layer that get LoRA (the query stays frozen, paper 4.1).
LORA_PROJECTIONS = ("to_k", "to_v", "to_out.0")
#: Key prefix of the transformer's weights in diffusers LoRA files.
LORA_PREFIX = "transformer"


def lora_layer_count(module: nn.Module) -> int:
    """Number of peft tuner layers (LoRA wrappers) inside `module`; 0 for a clean model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def _linear(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


def lora_targets(transformer: nn.Module) -> list[str]:
    """Module names of K, V and O of every attention layer, in layer order.

    An attention without an output projection (diffusers' ``pre_only`` attention, whose output the
    block projects together with its MLP, e.g. HunyuanVideo's single-stream blocks) gets K and V only.
    """
    names = {id(m): n for n, m in transformer.named_modules()}
    targets = []
    for i, attn in enumerate(get_adapter(transformer).attention_layers(transformer)):
        for proj in LORA_PROJECTIONS:
            if proj == "to_out.0" and getattr(attn, "to_out", None) is None:
                continue
            name = f"{names[id(attn)]}.{proj}"
            try:
                module = _linear(transformer.get_submodule(name))
            except AttributeError:
                module = None
            if not isinstance(module, nn.Linear):
                raise SubjectError(
                    f"Expected an nn.Linear {proj} in attention layer {i} ({name}), but got "
                    f"{type(module).__name__}. Unfuse projections (transformer.unfuse_qkv_projections())."
                )
            targets.append(name)
    return targets


def lora_shapes(transformer: nn.Module, targets: list[str], rank: int) -> dict[str, tuple[int, ...]]:
    """Expected diffusers-format LoRA keys -> shapes for `targets` at `rank`."""
    shapes = {}
    for name in targets:
        linear = _linear(transformer.get_submodule(name))
        shapes[f"{LORA_PREFIX}.{name}.lora_A.weight"] = (rank, linear.in_features)
        shapes[f"{LORA_PREFIX}.{name}.lora_B.weight"] = (linear.out_features, rank)
    return shapes


def lora_metadata(rank: int, alpha: float, targets: list[str]) -> dict[str, Any]:
    """peft `LoraConfig` kwargs stored with the weights, so loaders use our alpha (no scale trap)."""
    return {
        "r": int(rank),
        "lora_alpha": float(alpha),
        "target_modules": list(targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
        "use_dora": False,
        "use_rslora": False,
        "rank_pattern": {},  # diffusers 0.35-0.37 read these two keys of the metadata unconditionally
        "alpha_pattern": {},
    }


def targets_of(lora: dict[str, torch.Tensor]) -> list[str]:
    """Module names a diffusers-format LoRA state dict touches, in key order."""
    found: dict[str, None] = {}
    for key in lora:
        name = key.removeprefix(f"{LORA_PREFIX}.").rsplit(".lora_", 1)[0]
        found[name] = None
    return list(found)


def lora_spec(subject: Any) -> tuple[int, float, list[str], dict[str, str]]:
    """(rank, alpha, target modules, prefixed diffusers metadata) of `subject`'s LoRA.

    Rank defaults to the width of the ``lora_B`` weights and alpha to the rank (scale 1).
    """
    rank = subject.lora_rank
    if rank is None:
        widths = [v.shape[1] for k, v in subject.lora.items() if "lora_B" in k]
        if not widths:
            raise SubjectError("Expected LoRA weights with lora_B matrices, but got none. Retrain the subject.")
        rank = widths[0]
    rank = int(rank)
    alpha = float(subject.lora_alpha if subject.lora_alpha is not None else rank)
    targets = targets_of(subject.lora)
    meta = {f"{LORA_PREFIX}.{k}": v for k, v in lora_metadata(rank, alpha, targets).items()}
    return rank, alpha, targets, meta


def _peak(tensors: list[torch.Tensor]) -> float:
    """The largest magnitude in `tensors` (one host read per device)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel():
            by_device.setdefault(t.device, []).append(t.detach().abs().amax().float())
    return max((float(torch.stack(peaks).max()) for peaks in by_device.values()), default=0.0)


def lora_overflow_problem(subject: Any, dtype: torch.dtype) -> str | None:
    """Why `subject`'s LoRA, at its scale (alpha / rank x lora_scale), could exceed the largest `dtype` value
    (None: it cannot). A bound first (rank x max|B| x max|A| x scale: one pass over the weights); only when
    that exceeds the limit are the products B @ A themselves checked."""
    if subject.lora is None or not dtype.is_floating_point or dtype.itemsize < 2:  # fp8: a storage dtype only
        return None
    rank, alpha, _, _ = lora_spec(subject)
    scale = alpha / rank * float(subject.lora_scale)
    limit = torch.finfo(dtype).max
    high = {half: _peak([v for k, v in subject.lora.items() if f".lora_{half}." in k]) for half in "AB"}
    if scale * rank * high["A"] * high["B"] <= limit:
        return None
    peak = 0.0
    for key, a in subject.lora.items():
        b = subject.lora.get(key.replace(".lora_A.", ".lora_B.")) if ".lora_A." in key else None
        if b is not None:
            peak = max(peak, float((b.detach().double() @ a.detach().double()).abs().max()) * scale)
    if peak <= limit:
        return None
    return (f"Expected a LoRA whose scaled weights fit this model's {dtype} (at most {limit:g}), but got alpha "
            f"{alpha:g} / rank {rank} x lora_scale {subject.lora_scale:g} = scale {scale:g}, which takes them to "
            f"{peak:g}: the video would be inf and NaN. Load the model in float32 or bfloat16, or retrain the "
            "subject with a smaller alpha.")


def scale_adapter(transformer: nn.Module, adapter_name: str, scale: float) -> None:
    """Multiply adapter `adapter_name`'s LoRA scale (alpha / rank) by `scale` on every layer it is on
    (the wrappers go with the adapter on exit, so nothing needs restoring)."""
    for module in _tuner_layers(transformer):
        scaling = getattr(module, "scaling", {})
        if adapter_name in scaling:
            scaling[adapter_name] = scaling[adapter_name] * scale


def _tuner_layers(transformer: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]


def _adapters_in(layer: nn.Module) -> list[str]:
    return list(getattr(layer, "lora_A", {}).keys())


def fused_problems(transformer: nn.Module) -> list[str]:
    """A fused LoRA (``fuse_lora()``) cannot take another adapter next to it and come back exactly."""
    if any(getattr(m, "merged", False) for m in _tuner_layers(transformer)):
        return [
            "Expected LoRA weights kept apart from the base weights, but got a fused LoRA (fuse_lora()): its "
            "weights could not come back exactly. Call pipe.unfuse_lora() before inject() and fuse again after."
        ]
    return []


def _refuse_fused(transformer: nn.Module) -> None:
    problems = fused_problems(transformer)
    if problems:
        raise SubjectError(problems[0])


def _unwrap_empty(transformer: nn.Module, keep: set[nn.Module]) -> None:
    """Swap every peft wrapper that holds no adapter any more (and was not there before) back for its
    base layer, so the transformer's modules and state_dict keys are what they were."""
    for name, module in list(transformer.named_modules()):
        if module in keep or not hasattr(module, "get_base_layer") or _adapters_in(module):
            continue
        parent, _, child = name.rpartition(".")
        setattr(transformer.get_submodule(parent) if parent else transformer, child, module.get_base_layer())


@contextmanager
def peft_lora(
    transformer: nn.Module,
    adapter_name: str,
    *,
    config: Any = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Add a LoRA adapter (new, from a peft `config`, or loaded from a diffusers `state_dict`).

    Yields the adapter name; on exit removes it completely (see the module docstring). The user's own
    LoRAs are theirs: active ones stay active next to ours, disabled ones (``disable_lora()``) stay
    off while ours is on, one loaded inside the block stays after it, and a fused one is refused.
    """
    _refuse_fused(transformer)
    before = _tuner_layers(transformer)
    active = {m: list(m.active_adapters) for m in before}
    disabled = {m: bool(m.disable_adapters) for m in before}
    grads = [(p, p.requires_grad) for p in transformer.parameters()]
    own = vars(transformer)
    flag = ("_hf_peft_config_loaded" in own, own.get("_hf_peft_config_loaded"))
    try:
        if config is not None:
            transformer.add_adapter(config, adapter_name=adapter_name)
        else:
            transformer.load_lora_adapter(
                dict(state_dict or {}), prefix=LORA_PREFIX, adapter_name=adapter_name, metadata=metadata
            )
        for module in before:  # the user's adapters keep their state; ours is on next to them
            if adapter_name in _adapters_in(module):
                module.enable_adapters(True)
                module.set_adapter(([] if disabled[module] else active[module]) + [adapter_name])
        yield adapter_name
    finally:
        _remove(transformer, adapter_name, before, active, disabled, flag)
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)
        logger.debug("LoRA adapter %s removed (%d peft layers left)", adapter_name, lora_layer_count(transformer))


def _remove(transformer: nn.Module, name: str, before: list, active: dict, disabled: dict, flag: tuple) -> None:
    """Take adapter `name` off: all peft layers go when nothing else is left, else only ours."""
    others = [n for n in getattr(transformer, "peft_config", {}) if n != name]
    if not others:
        if name in getattr(transformer, "peft_config", {}):
            transformer.unload_lora()
        own = vars(transformer)
        if flag[0]:
            own["_hf_peft_config_loaded"] = flag[1]
        else:
            own.pop("_hf_peft_config_loaded", None)
        return
    if name in transformer.peft_config:
        transformer.delete_adapters(name)
    for module in before:
        module.set_adapter([n for n in active[module] if n in _adapters_in(module)] or active[module])
        module.enable_adapters(not disabled[module])
    _unwrap_empty(transformer, set(before))
