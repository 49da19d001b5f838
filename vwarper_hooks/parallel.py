"""`enable_context_parallel(pipe, config)`: one video's tokens split over several ranks, the way V-Warper
runs under it, for every family that does (`Adapter.context_parallel`: Wan, CogVideoX).

Wan has a plan in diffusers, so this is ``pipe.transformer.enable_parallelism(config=config)``; CogVideoX has
none, and its adapter brings a plan and a processor (`vwarper_adapters.cogvideox.enable_context_parallel`). Call
it on every rank, after ``torch.distributed.init_process_group``, before `inject` (and with the same seed on
every rank: each rank then holds the whole video). How V-Warper runs under it: `contract.sharding`.
"""

from __future__ import annotations

from typing import Any

from .contract.adapter import base_model
from .contract.experts import experts
from .contract.sharding import TokenShards, sharding_problems
from .errors import ConfigError
from .plugins import get_adapter


def enable_context_parallel(pipe: Any, config: Any) -> None:
    """Split `pipe`'s transformer (every expert of a two-expert pipeline) over the ranks of `config`, a diffusers
    ``ContextParallelConfig``. Refused with a `ConfigError`, nothing changed, for a family that does not run
    under it or heads the ranks cannot share out.

    Example (each rank)::

        torch.distributed.init_process_group("nccl")
        vwarper.enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=2))
        with vwarper.inject(pipe, subject):
            video = pipe(prompt, generator=torch.Generator("cuda").manual_seed(0)).frames[0]
    """
    adapter = get_adapter(pipe.transformer)
    if not adapter.context_parallel:
        raise ConfigError([
            f"Expected a family V-Warper runs under context parallelism (Wan, CogVideoX), but "
            f"{type(base_model(pipe.transformer)).__name__} ({adapter.name}) does not yet. Run one process per "
            "video (data parallel: the benchmark runner under torchrun or accelerate)."
        ])
    ranks = getattr(config, "ulysses_degree", 1) * getattr(config, "ring_degree", 1)
    heads = adapter.attention_layers(base_model(pipe.transformer))[0].heads
    problems = sharding_problems(TokenShards(None, ranks, 0), heads=heads)
    if problems:
        raise ConfigError(problems)
    for expert in experts(adapter, pipe):
        adapter.enable_context_parallel(base_model(expert), config)
