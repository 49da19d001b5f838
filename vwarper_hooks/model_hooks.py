"""What diffusers and accelerate put on a transformer, found wherever it is (the hook registry of every submodule).

- **Step caches** (FirstBlockCache, FasterCache, PyramidAttentionBroadcast, MagCache, SeaCache, TaylorSeer,
  text K/V caches): they reuse residuals across calls, so the reference branch would read the
  generation's cache (or the other way round). Refused, whether enabled with ``enable_cache`` or with
  an ``apply_*`` function, and again at each run's start (a cache enabled inside the ``with`` block).
- **Context parallelism** (``enable_parallelism`` with a ``ContextParallelConfig``): each rank sees a
  part of the tokens. Runs for the families whose adapter says so (`Adapter.context_parallel`: Wan, and
  CogVideoX through its adapter's `enable_context_parallel`; see `vwarper_hooks.contract.sharding`); refused
  for the others.
- **Per-module memory hooks** (group offloading, layerwise casting, accelerate's CPU offload hooks):
  they act at each block's forward start and end. They work with V-Warper, but the lockstep reference
  branch pauses inside a block while the generation runs that block, so the block's end hook would
  offload or downcast weights under the paused branch. With them, the reference runs before the
  generation instead (`WarpConfig.reference_lockstep` is not followed; the log says so).
"""

from __future__ import annotations

from typing import Any

from torch import nn

CACHE_HOOK_WORDS = ("cache", "fbc_", "pyramid_attention_broadcast")  # every diffusers cache hook name
MEMORY_HOOK_NAMES = ("group_offloading", "lazy_prefetch_group_offloading", "layerwise_casting")


def hook_names(model: nn.Module) -> set[str]:
    """Names of the diffusers hooks registered on `model` or any submodule."""
    names: set[str] = set()
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            names.update(getattr(registry, "hooks", {}))
    return names


def cache_hooks(model: nn.Module) -> list[str]:
    """The step-cache hooks on `model` (empty: none), also when ``is_cache_enabled`` does not know them."""
    found = {n for n in hook_names(model) if any(word in n for word in CACHE_HOOK_WORDS)}
    if getattr(model, "is_cache_enabled", False) and not found:
        found.add(type(getattr(model, "_cache_config", None)).__name__)
    return sorted(found)


def memory_hooks(model: nn.Module) -> list[str]:
    """Per-module hooks that offload or cast weights around each block's forward."""
    found = {n for n in hook_names(model) if n in MEMORY_HOOK_NAMES}
    if any(getattr(m, "_hf_hook", None) is not None for m in model.modules()):
        found.add("accelerate offload hook")
    return sorted(found)


def context_parallel(model: nn.Module) -> bool:
    """True when `model` runs under diffusers' context parallelism."""
    config = getattr(model, "_parallel_config", None)
    if config is not None and getattr(config, "context_parallel_config", None) is not None:
        return True
    return any(n.startswith(("cp_input", "cp_output")) for n in hook_names(model))


def hook_problems(model: nn.Module, parallel: bool = False) -> list[str]:
    """Clear refusals for what V-Warper cannot run under (caches; context parallelism unless `parallel`, the
    adapter's `context_parallel`)."""
    problems = []
    caches = cache_hooks(model)
    if caches:
        problems.append(
            f"Expected no diffusers step cache on the transformer, but found {', '.join(caches)}: the reference "
            "branch would share the generation's cached residuals. Remove it first (transformer.disable_cache(), "
            "or build the transformer again if it was added with an apply_* function), and do not enable one "
            "inside the inject() block."
        )
    if context_parallel(model) and not parallel:
        problems.append(
            f"Expected a transformer on one device, but this {type(model).__name__} runs under diffusers' context "
            "parallelism (ContextParallelConfig), which V-Warper supports for Wan and CogVideoX only (their "
            "adapters turn a layer's tokens into heads around the method; this family's adapter does not yet). "
            "Run one process per video (data parallel: the benchmark runner under torchrun or accelerate), with "
            "group offloading or CPU offload to fit a small GPU."
        )
    return problems


def describe(model: Any) -> str:
    """One line for the log: the memory hooks that turn lockstep off."""
    return ", ".join(memory_hooks(model))
