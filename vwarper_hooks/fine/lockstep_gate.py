"""Where the generation and the paused reference branch meet (see `lockstep` for the hand-off itself):
whether a step's reference forward runs in lockstep, and what happens as each routed layer is entered."""

from __future__ import annotations

from ..contract.adapter import Adapter
from .capture import Branch, Router, RunState
from .lockstep import Lockstep
from .token_map import side_by_side


def runs_in_lockstep(run: RunState, adapter: Adapter, memory_hooks: list[str], layers: frozenset[int]) -> bool:
    """Whether this step's reference forward (over `layers`) runs beside the generation: it has warp
    layers, one generation pass reads them (CFG in one batch), no feature cache keeps them all, and no
    offload or casting hook moves a block's weights under the paused reference."""
    config = run.config
    return (config.reference_lockstep and adapter.cfg_in_one_batch and not config.cache_reference_features
            and not memory_hooks and bool(layers & run.plan.warp_layers))


def enter_layer(lockstep: Lockstep, router: Router, layer: int) -> None:
    """Before a routed layer's Q/K/V (`LayerRouter.entering`): in lockstep, a reference worker pauses before
    its next warp layer, and the generation entering a warp layer has every worker run that layer first
    (the previous warp layer's values are dropped: used)."""
    route = router.route
    if not lockstep.active or layer not in lockstep.layers:
        return
    if route.branch is Branch.REFERENCE:
        lockstep.pause_here(layer)
    elif route.branch is Branch.GENERATION and route.pass_index == 0:
        run = router.run
        run.warp_values = {}
        lockstep.advance(layer)
        if run.warp is not None:
            run.warp_values[layer] = side_by_side(run, layer)
        for subject in run.subjects:
            subject.ref_values.pop(layer, None)
