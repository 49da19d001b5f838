"""Communication and memory per rank of V-Warper under Ulysses context parallelism, from the shapes.

    python benchmarks/cost_comm.py    # Wan 1.3B and 14B (480x832, 14B also 720x1280), CogVideoX-5B; 2/4/8 ranks

Under ``ContextParallelConfig(ulysses_degree=P)`` every attention layer call moves its Q, K, V and output
through one all-to-all each: 4 x batch x N/P x H x D elements put in per rank. A layer V-Warper routes
makes the same four (`vwarper_hooks.contract.sharding`: it turns the tokens into heads around the core
instead of around the kernel), except the reference branch's deepest layer, which stops before its
output. What V-Warper adds (`sharding` module doc):

- the reference branch's own forwards (layers 0 to its deepest, at the reference steps) and, for a fresh
  subject, the inversion's (one full forward per inverted step), all-to-alls like any forward;
- the match features: Q and K of every head, all-gathered at the match layer, for the generation (its
  first CFG pass) and the reference, at each match step;
- the rotary tables (cos, sin; float32 in Wan), all-gathered by each routed self-attention call;
- the foreground score, N/P floats all-gathered once per warp step and subject (Wan), or N floats
  all-reduced (CogVideoX, whose ranks score every token with their own heads).

CogVideoX has no plan in diffusers: with `enable_context_parallel` (`adapters/cogvideox.py`) every layer, stock
or routed, runs our processor, so all its all-to-alls are ours ("vwarper all-to-all"), plus per layer call
the text output of every head all-gathered (text stays whole on every rank; "text all-gather"); its rotary
tables are not split, and the match features include the text tokens.

Bytes "put in" are what a rank hands to the collective; what crosses the wire to one rank is (P-1)/P of
that for an all-to-all and (P-1) times it for an all-gather (`received`). The counting rules are checked
against the bytes a real 2-process run moves (`tests/test_context_parallel.py`, the tiny Wan of
`tests/context_parallel_worker.py`): equal, kind by kind, for the stock call and for a cold and a warm one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(__file__))

from vwarper_hooks.config import WarpConfig  # noqa: E402
from vwarper_hooks.contract.adapter import proportional_layers  # noqa: E402
from vwarper_hooks.contract.plan import StepPlan  # noqa: E402

KINDS = ("stock all-to-all", "vwarper all-to-all", "match features all-gather", "rotary all-gather",
         "foreground all-gather", "foreground all-reduce", "text all-gather")
GATHERS = {"match features all-gather", "rotary all-gather", "foreground all-gather", "text all-gather"}
#: what one rank receives per byte it puts in: (P-1)/P for an all-to-all, P-1 for an all-gather, 2(P-1)/P for a
#: ring all-reduce
REDUCES = {"foreground all-reduce"}


@dataclass(frozen=True)
class Geometry:
    """One model at one size: Wan-like (video-only self-attention, text in a cross-attention; `text_tokens` 0)
    or CogVideoX-like (text joins every attention: `text_tokens`, CFG as one batch of 2, our processor on
    every layer, rotary tables whole)."""

    name: str
    tokens: int  # video tokens N
    heads: int
    head_dim: int
    depth: int
    calls_per_step: int = 2  # Wan: CFG as two transformer calls of batch 1
    batch: int = 1  # samples per call
    act_bytes: int = 2  # bfloat16 activations
    rope_bytes: int = 4  # Wan keeps its rotary tables in float32
    photos: int = 1  # reference photos batched in the reference branch
    latent_bytes: int = 0  # one latent (for the inversion trajectory a rank holds)
    params: int = 0  # transformer parameters (replicated on every rank)
    text_tokens: int = 0  # text tokens in every attention (joint layout); 0: text has its own attention
    stock_parallel: bool = True  # diffusers' own Ulysses runs the stock layers (False: our processor does)
    rope_split: bool = True  # diffusers splits the rotary tables by token (each routed call gathers them)

    def per_rank(self, ranks: int) -> int:
        return self.tokens // ranks


def _tensor(g: Geometry, ranks: int, batch: int) -> int:
    """Bytes one all-to-all of Q, K, V or the output puts in: batch x N/P x H x D."""
    return batch * g.per_rank(ranks) * g.heads * g.head_dim * g.act_bytes


def _layer(out: Counter, g: Geometry, ranks: int, batch: int, routed: bool, whole: bool = True) -> None:
    """One attention layer call: Q, K, V and (unless it stops before it: not `whole`) the output all-to-all'd,
    and in a joint layout the text output of every head all-gathered."""
    kind = "vwarper all-to-all" if routed or not g.stock_parallel else "stock all-to-all"
    out[kind] += (4 if whole else 3) * _tensor(g, ranks, batch)
    if g.text_tokens and whole:
        out["text all-gather"] += batch * g.text_tokens * (g.heads // ranks) * g.head_dim * g.act_bytes


def _forward(out: Counter, g: Geometry, ranks: int, batch: int, routed: frozenset[int], stop: int | None) -> None:
    """One transformer forward through every layer, or (reference branch) through `stop`, where it stops."""
    for layer in range(g.depth if stop is None else stop + 1):
        _layer(out, g, ranks, batch, layer in routed, whole=layer != stop)
    if g.rope_split:
        out["rotary all-gather"] += len(routed) * 2 * g.per_rank(ranks) * g.head_dim * g.rope_bytes  # cos, sin


def step_bytes(g: Geometry, plan: StepPlan, step: int, ranks: int, subjects: int = 1) -> Counter:
    """Bytes each rank puts into each kind of collective at `step` (generation and reference branch)."""
    out: Counter = Counter()
    # Q and K of one sample, this rank's heads, every token (the matcher's view of the call)
    features = 2 * (g.tokens + g.text_tokens) * (g.heads // ranks) * g.head_dim * g.act_bytes
    for pass_index in range(g.calls_per_step):
        _forward(out, g, ranks, g.batch, plan.generation_layers(step, pass_index, not g.text_tokens), None)
    if step in plan.match_steps:
        out["match features all-gather"] += g.batch * features
    routed = plan.reference_layers(step)
    if routed:
        _forward(out, g, ranks, g.photos, routed, max(routed))
        if step in plan.match_steps:
            out["match features all-gather"] += g.photos * features
    if step in plan.warp_steps and plan.fg_steps:  # float32 scores
        if g.text_tokens:
            out["foreground all-reduce"] += subjects * g.tokens * 4
        else:
            out["foreground all-gather"] += subjects * g.per_rank(ranks) * 4
    return out


def run_bytes(g: Geometry, plan: StepPlan | None, steps: int, ranks: int, cold: bool = False) -> Counter:
    """Bytes per rank of a whole call: plain (`plan` None), warm, or cold (the inversion's forwards too)."""
    total: Counter = Counter()
    for step in range(steps):
        if plan is None:
            for _ in range(g.calls_per_step):
                _forward(total, g, ranks, g.batch, frozenset(), None)
        else:
            total += step_bytes(g, plan, step, ranks)
    if cold and plan is not None and plan.warp_steps:
        for _ in range(steps - min(plan.match_steps | plan.warp_steps)):
            _forward(total, g, ranks, g.photos, frozenset(), None)
    return total


def received(counts: Counter, ranks: int) -> float:
    """Bytes that reach one rank from the others, from the bytes it puts in (`REDUCES`, `GATHERS`)."""
    def share(kind: str) -> float:
        if kind in GATHERS:
            return ranks - 1
        return 2 * (ranks - 1) / ranks if kind in REDUCES else (ranks - 1) / ranks

    return sum(n * share(kind) for kind, n in counts.items())


def memory_per_rank(g: Geometry, plan: StepPlan, steps: int, ranks: int) -> dict[str, float]:
    """V-Warper's extra memory per rank (bytes, an estimate) beside the replicated weights. CFG as two calls
    (Wan) has no lockstep: every warp layer's reference V is held; in one batch (CogVideoX) one layer's."""
    full = g.tokens * g.heads * g.head_dim * g.act_bytes  # one tensor of every video token and head
    joint = (g.tokens + g.text_tokens) * g.heads * g.head_dim * g.act_bytes  # ... and text tokens
    held = 1 if g.calls_per_step == 1 else len(plan.warp_layers)
    return {
        "weights (replicated)": g.params * g.act_bytes,
        f"reference V of {held} warp layer(s) (this rank's heads)": held * g.photos * full / ranks,
        "reference match Q/K (every head, gathered)": 2 * g.photos * joint,
        "generation match Q/K (every head, gathered)": 2 * g.batch * joint,
        "rotary tables, gathered (one routed call)": 2 * g.tokens * g.head_dim * g.rope_bytes * g.rope_split,
        "inversion trajectory (replicated)": (steps - min(plan.match_steps | plan.warp_steps)) * g.latent_bytes,
    }


def wan_geometry(name: str, config: dict, height: int, width: int, frames: int) -> Geometry:
    """Wan's token grid: VAE 4x in time and 8x in space, patches (1, 2, 2)."""
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    import torch
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):  # the released config's parameter count, nothing allocated
        params = sum(p.numel() for p in WanTransformer3DModel(**config).parameters())
    return Geometry(name, tokens, config["num_attention_heads"], config["attention_head_dim"], config["num_layers"],
                    latent_bytes=16 * math.prod(latent) * 2, params=params)


def cogvideox_geometry(name: str, config: dict, height: int, width: int, frames: int) -> Geometry:
    """CogVideoX's token grid: VAE 4x in time and 8x in space, patch 2; text 226 tokens; CFG as a batch of 2."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    with torch.device("meta"):
        params = sum(p.numel() for p in CogVideoXTransformer3DModel(**config).parameters())
    return Geometry(name, latent[0] * (latent[1] // 2) * (latent[2] // 2), config["num_attention_heads"],
                    config["attention_head_dim"], config["num_layers"], calls_per_step=1, batch=2,
                    latent_bytes=16 * math.prod(latent) * 2, params=params, text_tokens=226, stock_parallel=False,
                    rope_split=False)


def shapes() -> list[Geometry]:
    from cost_models import COGVIDEOX_5B, WAN_1_3B, WAN_14B

    return [wan_geometry("Wan2.1-T2V-1.3B 480x832 81f", WAN_1_3B, 480, 832, 81),
            wan_geometry("Wan2.1-T2V-14B 480x832 81f", WAN_14B, 480, 832, 81),
            wan_geometry("Wan2.1-T2V-14B 720x1280 81f", WAN_14B, 720, 1280, 81),
            cogvideox_geometry("CogVideoX-5B 480x720 49f", COGVIDEOX_5B, 480, 720, 49)]


def report(geometries: list[Geometry], ranks: tuple[int, ...] = (2, 4, 8), steps: int = 50) -> str:
    gb = 1e9
    lines = [f"per rank, {steps} steps, the paper's window (warp 3-19); bytes put in (received from the others)"]
    for g in geometries:
        layers = proportional_layers(g.depth)
        config = WarpConfig(match_layer=layers.match_layer, warp_layers=layers.warp_layers)
        plan = StepPlan.build(config, steps, g.depth)
        lines.append(f"\n== {g.name}: {g.tokens} tokens, {g.heads} heads x {g.head_dim}, {g.depth} layers "
                     f"(match {layers.match_layer}, warp {layers.warp_layers[0]}-{layers.warp_layers[1]})")
        lines.append("ranks  per layer call   plain step   warp step (+match)   plain call   warm call   cold call"
                     "   warm/plain   extra beside all-to-all")
        for p in ranks:
            if g.heads % p or g.tokens % p:
                lines.append(f"{p:>5}  refused: {g.heads} heads or {g.tokens} tokens not divisible by {p}")
                continue
            layer = 4 * _tensor(g, p, g.batch)
            plain_step = sum(run_bytes(g, None, 1, p).values())
            warp_step = step_bytes(g, plan, min(plan.warp_steps & plan.match_steps), p)
            plain, warm = run_bytes(g, None, steps, p), run_bytes(g, plan, steps, p)
            cold = run_bytes(g, plan, steps, p, cold=True)
            others = GATHERS | REDUCES
            extra = sum(warm[k] for k in others)
            lines.append(
                f"{p:>5}  {layer / 1e6:>9.1f} MB {plain_step / gb:>9.2f} GB"
                f" {sum(warp_step.values()) / gb:>13.2f} GB {sum(plain.values()) / gb:>9.1f} GB"
                f" {sum(warm.values()) / gb:>8.1f} GB {sum(cold.values()) / gb:>8.1f} GB"
                f" {sum(warm.values()) / sum(plain.values()):>10.3f}x {extra / gb:>9.2f} GB"
                f" ({received(Counter({k: warm[k] for k in others}), p) / gb:.1f} GB received)")
        lines.append("memory per rank (estimate, MiB)      " + "".join(f"{p:>10} ranks" for p in ranks))
        for item in memory_per_rank(g, plan, steps, 1):
            cells = [memory_per_rank(g, plan, steps, p)[item] / 2**20 for p in ranks]
            lines.append(f"  {item:<52}" + "".join(f"{c:>16,.1f}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args(argv)
    print(report(shapes(), tuple(args.ranks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
