"""Peak-memory estimate for `cost.py`: plain transformer forward measured, V-Warper's extra itemised.

Plain: `MemTracker` over `FakeTensorMode` (nothing allocated) on one stock transformer forward at the
shape's real inputs (captured from the meta pipeline call), no grad: activations and inputs as
tracked, weights as the full model's parameter bytes. By default the tracked model keeps every width
but only its first block of each kind (`blocks=1`): a no-grad forward frees each block's temporaries
before the next block, so the activation peak of one block is the model's (`--memory-depth full`
checks it at full depth).

V-Warper: what it holds during a warp-step generation forward (the worst step: warp and match and
foreground at once), read from the live session on meta at that moment (shapes, dtypes and storage
sizes; a view keeps its whole storage alive, so storage is what counts), scaled to the composed
run's step counts; plus transients measured the same way as the plain forward (the value warp inside
a warp layer, the foreground score inside a layer, the streamed matcher between forwards).
An estimate: allocator rounding, fragmentation and the CUDA attention kernels' workspace are not in it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from vwarper_hooks.contract import AttentionCall, ReferenceFeatures, TokenMap
from vwarper_hooks.contract.plan import StepPlan
from vwarper_hooks.fine.foreground import ForegroundAccumulator
from vwarper_hooks.fine.matching import match_flows
from vwarper_hooks.fine.warping import ValueWarp

MiB = 2**20


def nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def storage(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _fake_like(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(tuple(value.shape), tuple(value.stride()), dtype=value.dtype)
    if isinstance(value, tuple | list):
        return type(value)(_fake_like(v) for v in value)
    return value


def _tracked_peak(run: Callable[[], Any], externals: list[Any]) -> dict[str, int]:
    """Peak bytes by kind (Parameter, Activation, Other = the tracked inputs, ...) while `run()` runs."""
    tracker = MemTracker()
    tracker.track_external(*externals)
    with tracker, torch.no_grad():
        run()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return {str(getattr(k, "value", k)): v for k, v in peak.items()}


def plain_forward_peak(transformer: torch.nn.Module, kwargs: dict, blocks: int | None = 1) -> dict[str, int]:
    """Weights, activations and inputs at the peak of one stock no-grad forward (`kwargs`: meta tensors)."""
    config = dict(transformer.config)
    if blocks is not None:
        config.update({k: min(v, blocks) for k, v in config.items() if k in ("num_layers", "num_single_layers")})
    weights = sum(nbytes(p) for p in transformer.parameters()) + sum(nbytes(b) for b in transformer.buffers())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(transformer.dtype)
    try:
        with FakeTensorMode():
            model = type(transformer).from_config(config).eval()
            inputs = {k: _fake_like(v) for k, v in kwargs.items()}
            peak = _tracked_peak(lambda: model(**inputs),
                                 [model, *[v for v in inputs.values() if isinstance(v, torch.Tensor)]])
    finally:
        torch.set_default_dtype(previous)
    return {"weights": weights, "activations": peak["Activation"] + peak.get("Temp", 0), "inputs": peak["Other"]}


def _transient(run: Callable[..., Any], specs: list[tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Peak bytes `run(*inputs)` allocates beyond its inputs (fake tensors of `specs`)."""
    with FakeTensorMode():
        inputs = [torch.empty(shape, dtype=dtype) for shape, dtype in specs]
        peak = _tracked_peak(lambda: run(*inputs), inputs)
    return peak["Total"] - peak["Other"]


def _storage_id(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # the storage itself (data pointers are all 0 on meta)


def _tensors_in(value: Any, depth: int = 2) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif depth and isinstance(value, tuple | list):
        for v in value:
            yield from _tensors_in(v, depth - 1)
    elif depth and isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v, depth - 1)


def paused_reference(session: Any, exclude: list[torch.Tensor]) -> int:
    """Bytes that the lockstep reference workers' paused stacks hold: every tensor in a local variable of
    their frames (the reference forward's inputs, its hidden states and the paused block's inputs),
    each storage once, the model's weights and the `exclude` tensors (counted elsewhere) left out."""
    skip = {_storage_id(t) for t in exclude}
    model = session.pipe.transformer
    skip |= {_storage_id(t) for t in [*model.parameters(), *model.buffers()]}
    frames = sys._current_frames()
    seen: dict[int, int] = {}
    for worker in session.lockstep:
        frame = frames.get(worker._thread.ident)
        while frame is not None:
            for value in frame.f_locals.values():
                for t in _tensors_in(value):
                    key = _storage_id(t)
                    if key not in skip:
                        seen[key] = storage(t)
            frame = frame.f_back
    return sum(seen.values())


def snapshot(session: Any, forward_kwargs: dict) -> dict[str, Any]:
    """Shapes and sizes of what the session holds now: call it before a warp-step generation forward, or
    in lockstep when the generation enters its first warp layer (that layer's reference values made)."""
    run, reference = session.router.run, session.branches[0].reference
    mine, state = run.subjects[0], reference.states[reference.image]
    lockstep = session.lockstep.active
    values = [f.value for f in (run.warp_values if lockstep else mine.ref_values).values()]
    diagnostics = [d for per_token in session._diagnostics._steps.values() for d in per_token.values()]
    one = diagnostics[0]
    latents = session.adapter.latents(forward_kwargs)
    ref_match = sum(nbytes(t) for match in mine.ref_match for t in match)
    return dict(
        ref_values=sum(storage(v) for v in values), value=values[0], value_storage=storage(values[0]),
        # the generation's match Q/K of this step are captured in the forward and held through the warp layers
        ref_match=ref_match, gen_match=ref_match,
        latent=nbytes(state.trajectory[0]), clean=nbytes(state.clean),
        text=sum(nbytes(t) for t in state.text.values()), foreground=nbytes(mine.foreground.total),
        diagnostics_step=sum(nbytes(t) for t in (one.flow, one.fg_score, one.fg_mask, one.cc_mask, one.mask)),
        ref_mask=nbytes(run.warp.ref_mask), batch=latents.shape[0], subject=run.subject.stop - run.subject.start,
        grid=session.adapter.token_grid(session.pipe.transformer, latents), config=run.config,
        joint_fg=run.config.fg_softmax == "joint" and not session.adapter.text_attention_outside,
        lockstep=lockstep,
        paused=paused_reference(session, [state.clean, state.trajectory, *state.text.values(), *values])
        if lockstep else 0,
    )


def _value_warp_extra(snap: dict) -> int:
    """What value warping allocates in a warp layer beyond the stock attention of that layer."""
    _, heads, tokens, dim = snap["value"].shape
    joint = snap["value_storage"] // (heads * dim * snap["value"].element_size())
    dtype, batch = snap["value"].dtype, snap["batch"]

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionCall:
        return AttentionCall(0, q, k, v, slice(0, joint - tokens), slice(joint - tokens, joint),
                             lambda *_: None, lambda x: x, F.scaled_dot_product_attention)

    qkv = [((batch, heads, joint, dim), dtype)] * 3
    stock = _transient(lambda q, k, v: call(q, k, v).default(), qkv)

    def warped(q: Any, k: Any, v: Any, ref: Any, flow: Any, mask: Any) -> Any:
        plan = TokenMap(flow=flow, mask=mask, ref_mask=mask)
        return ValueWarp().attend(call(q, k, v), ReferenceFeatures(value=ref), plan)

    specs = [*qkv, ((1, heads, tokens, dim), dtype), ((tokens,), torch.long), ((tokens,), torch.bool)]
    return _transient(warped, specs) - stock


def _foreground_extra(snap: dict) -> int:
    """One layer's foreground score (joint softmax: the kernel's log-sum-exp plus the subject logits)."""
    _, heads, tokens, dim = snap["value"].shape
    joint = snap["value_storage"] // (heads * dim * snap["value"].element_size())
    acc = ForegroundAccumulator()
    specs = [((heads, tokens, dim), snap["value"].dtype), ((heads, snap["subject"], dim), snap["value"].dtype),
             ((heads, tokens), torch.float32)]
    lse = snap["batch"] * heads * joint * 4 if snap["joint_fg"] else 0
    return lse + _transient(lambda q, k, s: acc.add_joint(q, k, s), specs)


def _matcher_transient(snap: dict) -> int:
    _, heads, tokens, dim = snap["value"].shape
    config, frames = snap["config"], snap["grid"][0]
    spec = ((heads, tokens, dim), snap["value"].dtype)
    return _transient(lambda *x: match_flows(*x, frames=frames, per_frame=config.per_frame_matching,
                                             chunk=config.match_chunk, head_combine=config.head_combine), [spec] * 4)


def feature_cache(snap: dict, plan: StepPlan, budget_gib: float) -> tuple[int, int]:
    """(total, on device) bytes of the cached reference features of a run following `plan`."""
    value = nbytes(snap["value"])
    sizes = []
    for step in sorted(plan.match_steps | plan.warp_steps):
        sizes += [snap["ref_match"]] if step in plan.match_steps else []
        sizes += [value] * (len(plan.warp_layers) if step in plan.warp_steps else 0)
    device, budget = 0, int(budget_gib * 2**30)
    for size in sizes:  # FeatureCache._keep: on the device while the running total fits the budget
        device += size if device + size <= budget else 0
    return sum(sizes), device


def vwarper_items(snap: dict, plan: StepPlan, steps: int, activations: int) -> dict[str, int]:
    """V-Warper's extra bytes at the peak of a run following `plan` (no feature cache), item by item."""
    first = min(s for s in range(steps) if plan.reference_layers(s))
    items = {
        **({"reference V of one warp layer (lockstep)": snap["ref_values"],
            "paused reference forward (its stack's tensors)": snap["paused"]} if snap["lockstep"] else
           {"reference V of every warp layer": snap["ref_values"]}),
        "reference match Q/K (step t)": snap["ref_match"],
        "generation match Q/K (step t-1)": snap["gen_match"],
        "inversion trajectory + clean latent + text": (steps - first) * snap["latent"] + snap["clean"] + snap["text"],
        "foreground accumulator": snap["foreground"],
        "diagnostics (every warp step) + warp plan": len(plan.warp_steps) * snap["diagnostics_step"] + snap["ref_mask"],
    }
    held = sum(items.values())
    # in one layer at a time: the match layer makes step t's generation Q/K while t-1's are held; a warp
    # layer warps its values; any layer may add its foreground score (upper bound: at the layer's own peak)
    items["in-layer transient: max(match Q/K, value warp) + fg"] = (
        max(snap["gen_match"], _value_warp_extra(snap)) + _foreground_extra(snap))
    items["= extra during a warp-step forward"] = during = sum(items.values())
    # matching runs between forwards (the forward's activations are freed), before t-1's features go
    items["between forwards: held + streamed matcher"] = between = held + _matcher_transient(snap)
    items["= extra at the peak"] = max(during, between - activations)
    return items
