"""V-Warper's cost at full size, without a GPU: FLOPs by part and a peak-memory estimate per shape.

    python benchmarks/cost.py                  # the full shapes (a few minutes on 2 CPU cores)
    python benchmarks/cost.py --config tiny    # the test suite's tiny pipelines (seconds)

Shapes: CogVideoX-5B at 25 and 49 frames (480x720, 50 steps, CFG 6 as one batch of 2), Wan2.1-T2V
1.3B and 14B (the WanPipeline defaults: 480x832, 81 frames, 50 steps, CFG 5 as two calls),
HunyuanVideo (the diffusers docs example size 320x512, 61 frames; 50 steps, embedded guidance 6, no
CFG batch). Each is built from its released config on the meta device (`cost_models.py`). The paper's
windows: match layer 12, warp layers 20-29, warp steps 3-19 of 50; Wan and HunyuanVideo keep their
adapters' defaults (the paper's layers scaled to the depth), printed per shape.

Variants: plain (stock pipeline); cold (a fresh subject: VAE encode and DDIM / flow inversion of the
reference, then the reference branch); warm (same subject again: inversion cached); cached
(``WarpConfig(cache_reference_features=True)`` with the features already cached, here by
``subject.prepare`` with that config: no reference forward at all); prepared (the first call after
``vwarper.prepare(pipe, subject, num_frames=..., ...)`` with the default config). The cost of ``prepare``
itself and of filling the feature cache is printed too (a one-off per subject and shape).

How it counts (machine-independent): torch's `FlopCounterMode` on the meta device (shapes only; the
attention kernels are counted there), the scheduler's arithmetic stubbed. A 50-step pipeline call on
meta takes minutes per shape, so each variant runs ONE short call (5 steps, warp window (2, 3): every
kind of step occurs once) with every FLOP attributed to a part while it runs (`cost_count.py`), and
the 50-step cost is composed from those units with the step counts of
`StepPlan.build(config, 50, depth)`. The composition is exact: `tests/test_cost_model.py` runs it on
tiny pipelines of each family and compares it, part by part, with an end-to-end FlopCounterMode count
of real longer calls with a scaled window. FLOPs are matmul / conv / attention FLOPs as
FlopCounterMode defines them (elementwise work such as the value warp's gather counts zero). VAE: the
decode of the final latent (untiled, counted once, the same for every variant) plus, cold, the
reference's encode. Text: the pipeline's prompt (and negative prompt) encoding, plus, cold, the
inversion prompt's. Memory: see `cost_memory.py` (an estimate).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import vwarper_hooks as vwarper
from vwarper_hooks.contract.plan import StepPlan, ranges
from vwarper_hooks.fine.capture import Branch
from vwarper_hooks.plugins import get_adapter

sys.path.insert(0, os.path.dirname(__file__))
from cost_configs import Shape, meta_pipeline, meta_shims, reorder_shim, tiny_shapes  # noqa: E402
from cost_count import PARTS, Measured, compose, measure, measure_prepare  # noqa: E402
from cost_memory import feature_cache, plain_forward_peak, snapshot, vwarper_items  # noqa: E402
from cost_models import full_shapes  # noqa: E402

PROMPT = "a photo of a <clock> clock on the beach"
SHORT_STEPS, SHORT_WARP, PLAIN_STEPS = 5, (2, 3), 1
VARIANTS = ("plain", "cold", "warm", "cached", "prepared")
ONE_OFF = ("prepare()", "fill feature cache")
OPTIONS = {"fg_softmax text": dict(fg_softmax="text"), "head_combine logits": dict(head_combine="logits")}
#: beyond the paper (issue 14): several photos per subject, several subjects (cold and warm each)
SEVERAL = {"3 photos": (3, 1), "5 photos": (5, 1), "2 subjects": (1, 2)}
TWO_PROMPT = "a photo of a <clock> clock and a <dog> dog on the beach"
TARGETS = {"warm": 1.13, "cached": 1.03, "cold": 1.60}
#: the feature cache, kept "on the device" whatever its size: meta tensors cannot be copied to the CPU, and
#: where the features sit changes no FLOP (the memory table places them with the default budget)
CACHE = dict(cache_reference_features=True, feature_cache_device_gib=1e6)


class Probe:
    """Keeps a plain generation forward's kwargs and the session's holdings at a warp step."""

    def __init__(self) -> None:
        self.plain: dict | None = None
        self.held: dict | None = None

    def __call__(self, session: Any, part: str, key: Any, kwargs: dict) -> None:
        if part == "generation" and key == ("plain", 0) and self.plain is None:
            self.plain = dict(kwargs)
        if part == "generation" and key == ((True, True, True), 0) and self.held is None:
            if session.lockstep.active:  # the reference runs beside the generation: look inside it
                self._at_first_warp_layer(session, kwargs)
            else:
                self.held = snapshot(session, kwargs)

    def _at_first_warp_layer(self, session: Any, kwargs: dict) -> None:
        """Snapshot once the generation has entered its first warp layer (its reference values made,
        the reference worker paused before the next)."""
        enter = session.router.on_enter

        def probing(layer: int) -> None:
            enter(layer)
            if session.router.route.branch is Branch.GENERATION and layer in session.lockstep.layers:
                session.router.on_enter = enter
                self.held = snapshot(session, kwargs)

        session.router.on_enter = probing


def warp_config(shape: Shape, warp_steps: tuple[int, int], **fields: Any) -> vwarper.WarpConfig:
    """Built fresh (not `updated`): fields a user did not set keep the adapter's default layers.

    FLOPs are counted with the reference branch before the generation (``reference_lockstep=False``):
    the ledger attributes FLOPs to parts by nesting, which lockstep interleaves. Lockstep runs the very
    same operations (`measure_variants` checks the totals agree); the memory probe runs in lockstep.
    """
    return vwarper.WarpConfig(warp_steps=warp_steps, **shape.layers, **{"reference_lockstep": False, **fields})


def new_subject(photos: int = 1, token: str = "<clock>") -> vwarper.Subject:
    images = [Image.new("RGB", (64, 64), (200, 80 + 10 * i, 40)) for i in range(photos)]
    return vwarper.Subject.from_images(images, token, token.strip("<>"))


def measure_several(pipe: Any, kwargs: dict, shape: Shape, warp_steps: tuple[int, int]) -> dict[str, Measured]:
    """Cold and warm calls with several photos per subject, or several subjects (`SEVERAL`)."""
    out = {}
    for name, (photos, subjects) in SEVERAL.items():
        chosen = [new_subject(photos, token) for token in ("<clock>", "<dog>")[:subjects]]
        config = warp_config(shape, warp_steps, num_references=photos)
        call = {**kwargs, "prompt": TWO_PROMPT} if subjects > 1 else kwargs
        out[f"cold, {name}"] = measure(pipe, call, chosen, config)
        out[f"warm, {name}"] = measure(pipe, call, chosen, config)
    return out


def measure_variants(pipe: Any, shape: Shape, steps: int, warp_steps: tuple[int, int], plain_steps: int,
                     options: bool = False, probe: Probe | None = None) -> dict[str, Measured]:
    """One call per variant (see the module doc), in the order a user would make them."""
    kwargs = {"prompt": PROMPT, **shape.call, "num_inference_steps": steps, "output_type": "latent"}
    base, cache = warp_config(shape, warp_steps), warp_config(shape, warp_steps, **CACHE)
    out = {"plain": measure(pipe, {**kwargs, "num_inference_steps": plain_steps}, probe=probe)}
    first = new_subject()
    out["cold"] = measure(pipe, kwargs, first, base)
    out["warm"] = measure(pipe, kwargs, first, base)
    if probe is not None:  # the memory snapshot, with the default reference_lockstep=True: the same FLOPs
        lockstep = measure(pipe, kwargs, first, warp_config(shape, warp_steps, reference_lockstep=True), probe=probe)
        if lockstep.total != out["warm"].total:
            raise AssertionError(f"{shape.name}: lockstep counted {lockstep.total} FLOPs, warm {out['warm'].total}")
    out["fill feature cache"] = measure_prepare(pipe, kwargs, first, cache)
    out["cached"] = measure(pipe, kwargs, first, cache)
    for name, fields in OPTIONS.items() if options else ():
        out[f"cached, {name}"] = measure(pipe, kwargs, first, warp_config(shape, warp_steps, **fields, **CACHE))
    if options:
        out.update(measure_several(pipe, kwargs, shape, warp_steps))
    second = new_subject()
    out["prepare()"] = measure_prepare(pipe, kwargs, second, base)
    out["prepared"] = measure(pipe, kwargs, second, base)
    return out


def long_plan(pipe: Any, shape: Shape) -> tuple[vwarper.WarpConfig, StepPlan, int]:
    """The composed run's config (adapter defaults filled in, as `inject` does), plan and depth."""
    adapter = get_adapter(pipe.transformer)
    depth = len(adapter.attention_layers(pipe.transformer))
    config = warp_config(shape, shape.warp_steps).for_adapter(adapter, depth)
    return config, StepPlan.build(config, shape.steps, depth), depth


def decode_flops(pipe: Any, forward_kwargs: dict) -> int:
    """FLOPs of the VAE decode of one video's final latent (the pipelines' output_type="latent" skips it)."""
    latents = get_adapter(pipe.transformer).latents(forward_kwargs)[:1]
    channels = getattr(pipe.vae.config, "latent_channels", None) or pipe.vae.config.z_dim
    if latents.shape[1] != channels and latents.shape[2] == channels:  # (B, F, C, H, W), as CogVideoX's
        latents = latents.permute(0, 2, 1, 3, 4)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)
    return counter.get_total_flops()


@dataclass
class ShapeResult:
    shape: Shape
    config: vwarper.WarpConfig
    plan: StepPlan
    depth: int
    parts: dict[str, dict[str, int]]  # variant -> part -> FLOPs of the composed run
    measured: dict[str, Measured]
    probe: Probe
    decode: int = 0  # the VAE decode, counted apart and added to every generation variant's VAE part
    memory: dict[str, int] = field(default_factory=dict)
    cache: tuple[int, int] = (0, 0)
    seconds: float = 0.0  # how long measuring it took

    def total(self, variant: str) -> int:
        return sum(self.parts[variant].values())


def measure_shape(shape: Shape, options: bool = False, memory_blocks: int | None = 1) -> ShapeResult:
    """Everything `cost.py` prints for one shape."""
    with meta_shims():
        pipe = meta_pipeline(shape)
        probe = Probe()
        measured = measure_variants(pipe, shape, SHORT_STEPS, SHORT_WARP, PLAIN_STEPS, options, probe)
        config, plan, depth = long_plan(pipe, shape)
        decode = decode_flops(pipe, probe.plain)
    parts = {}
    for name, m in measured.items():
        parts[name] = compose(m, shape.steps, None if name == "plain" else plan)
        parts[name]["VAE"] += 0 if name in ONE_OFF else decode
    layers = measured["warm"].plan
    if (layers.match_layer, layers.warp_layers, layers.fg_layers) != (plan.match_layer, plan.warp_layers,
                                                                       plan.fg_layers):
        raise AssertionError(f"{shape.name}: the short calls used other layers than the composed run")
    result = ShapeResult(shape, config, plan, depth, parts, measured, probe, decode)
    if memory_blocks != 0:
        with reorder_shim():  # fake tensors have no values either
            result.memory = plain_forward_peak(pipe.transformer, probe.plain, memory_blocks)
        result.memory.update(vwarper_items(probe.held, plan, shape.steps, result.memory["activations"]))
        result.cache = feature_cache(probe.held, plan, config.feature_cache_device_gib)
    return result


def _row(cells: list[Any], widths: list[int]) -> str:
    return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _layers(result: ShapeResult) -> str:
    plan = result.plan
    return (f"{result.depth} layers: match {plan.match_layer}, warp {ranges(plan.warp_layers)}; "
            f"steps: warp {ranges(plan.warp_steps)}, match {ranges(plan.match_steps)}, fg {ranges(plan.fg_steps)}"
            f" of {result.shape.steps}")


def flop_table(result: ShapeResult, unit: float) -> list[str]:
    shape, plain = result.shape, result.total("plain")
    call = shape.call
    grid = result.probe.held["grid"]
    lines = [f"== {shape.name}: {call['height']}x{call['width']}, {call['num_frames']} frames, guidance "
             f"{call['guidance_scale']}, batch {result.probe.held['batch']} per forward; video tokens "
             f"{'x'.join(map(str, grid))} = {grid[0] * grid[1] * grid[2]}",
             f"   {_layers(result)}" + (f"  ({shape.note})" if shape.note else "")]
    widths = [27, 9, 7, 7] + [10] * len(PARTS)
    lines.append(_row(["variant", "total", "x plain", "x dnz", *PARTS], widths))
    denoise = ("generation", "reference", "inversion", "matching", "masks/fg")
    plain_dnz = sum(result.parts["plain"][p] for p in denoise)
    extra = [n for n in result.parts if n.startswith(("cached, ", "cold, ", "warm, "))]
    for name in [*VARIANTS, *ONE_OFF, *extra]:
        parts = result.parts[name]
        dnz = sum(parts[p] for p in denoise) / plain_dnz
        cells = [name, f"{result.total(name) / unit:.2f}", f"{result.total(name) / plain:.4f}", f"{dnz:.4f}"]
        lines.append(_row(cells + [f"{parts[p] / unit:.2f}" for p in PARTS], widths))
    extra = result.parts["warm"]["generation"] - result.parts["plain"]["generation"]
    if extra:
        lines.append(f"   generation forwards under V-Warper: {extra / unit:+.2f} over plain's ({extra / plain:+.3%} "
                     "of plain), the routed layers' own work (Wan: cross-attention Q/K recomputed for the fg score)")
    return lines


def memory_table(results: list[ShapeResult]) -> list[str]:
    # every shape's items, each where its shape lists it (lockstep shapes and shapes holding every warp
    # layer's values itemise differently)
    names: list[str] = []
    for r in results:
        at = 0
        for key in (k for k in r.memory if k not in ("weights", "activations", "inputs")):
            if key not in names:
                names.insert(at, key)
            at = names.index(key) + 1
    widths = [61] + [17] * len(results)
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    lines = [_row(["peak memory, MiB (estimate, see cost_memory.py)", *[r.shape.name for r in results]], widths)]
    plain = [sum(r.memory[k] for k in ("weights", "activations", "inputs")) for r in results]
    for key in ("weights", "activations", "inputs"):
        lines.append(_row([f"plain transformer forward: {key}", *[mib(r.memory[key]) for r in results]], widths))
    lines.append(_row(["plain transformer forward: peak", *map(mib, plain)], widths))
    for key in names:
        lines.append(_row([f"V-Warper: {key}", *[mib(r.memory[key]) if key in r.memory else "-" for r in results]],
                          widths))
    extra = [r.memory["= extra at the peak"] for r in results]
    lines.append(_row(["V-Warper extra, % of plain peak (target <= 5%)",
                       *[f"{100 * e / p:.2f}%" for e, p in zip(extra, plain, strict=True)]], widths))
    lines.append(_row(["feature cache (cache_reference_features): total",
                       *[mib(r.cache[0]) for r in results]], widths))
    lines.append(_row([f"feature cache: on device (budget {results[0].config.feature_cache_device_gib} GiB)",
                       *[mib(r.cache[1]) for r in results]], widths))
    return lines


def _verdict(ok: bool, value: float, bound: float, what: str) -> str:
    return "PASS" if ok else f"MISSED by {value - bound:.4g}{what}"


def _dominant(result: ShapeResult, variant: str) -> str:
    """The part that adds most over plain."""
    extra = {p: result.parts[variant][p] - result.parts["plain"][p] for p in PARTS}
    part = max(extra, key=extra.get)
    return f" (largest addition: {part}, {extra[part] / result.total('plain'):.2%} of plain)"


def target_lines(result: ShapeResult) -> list[str]:
    plain = result.total("plain")
    lines = [f"targets (issue 12 item 6) at {result.shape.name}: FLOPs of the whole call (text encoding, "
             f"{result.shape.steps} steps, VAE decode) over plain"]
    for variant, bound in TARGETS.items():
        ratio = result.total(variant) / plain
        verdict = _verdict(ratio <= bound, ratio, bound, "x" + _dominant(result, variant))
        lines.append(f"  {variant:<9} <= {bound:.2f}x plain: {ratio:.4f}x  {verdict}")
    warm, prepared = result.total("warm"), result.total("prepared")
    lines.append(f"  prepared first call = warm: {prepared / plain:.4f}x vs {warm / plain:.4f}x  "
                 f"{'PASS' if prepared == warm else 'MISSED'}")
    parts = result.parts["warm"]
    routed = parts["generation"] - result.parts["plain"]["generation"]
    share = (parts["matching"] + parts["masks/fg"] + routed) / plain
    lines.append(f"  matcher + masks/fg (+ routed layers' extra) <= 1% of plain FLOPs: {share:.4%}  "
                 f"{_verdict(share <= 0.01, 100 * share, 1.0, ' points')}")
    if result.memory:
        m = result.memory
        percent = 100 * m["= extra at the peak"] / (m["weights"] + m["activations"] + m["inputs"])
        lines.append(f"  V-Warper memory extra (no feature cache) <= 5% of plain peak: {percent:.2f}%  "
                     f"{_verdict(percent <= 5, percent, 5, ' points')}")
    return lines


def option_lines(result: ShapeResult, unit: float, label: str) -> list[str]:
    plain, base = result.total("plain"), result.total("cached")
    lines = [f"FLOP differences between options at {result.shape.name} (whole {result.shape.steps}-step call; "
             "the same with and without the feature cache):"]
    for name in OPTIONS:
        delta = result.total(f"cached, {name}") - base
        default = {"fg_softmax text": 'fg_softmax "text" - "joint"',
                   "head_combine logits": 'head_combine "logits" - "probs"'}[name]
        lines.append(f"  {default:<34} {delta / unit:+.4f} {label} = {delta / plain:+.4%} of plain")
    # eq. 3 either way multiplies the same Q and K (per head, or with the heads concatenated); "probs" also
    # exponentiates every head's scores: elementwise work, which FlopCounterMode counts as zero
    heads, tokens = result.probe.held["value"].shape[1:3]
    groups = result.probe.held["grid"][0] if result.config.per_frame_matching else 1
    n = tokens // groups
    exps = 4 * (heads - 1) * groups * n * n * len(result.plan.warp_steps)
    lines.append(f"  (the same matmuls either way; \"probs\" adds {exps / 1e9:.1f} G exp/logsumexp elementwise ops "
                 f"per call, {exps / plain:.5%} of plain, uncounted by FlopCounterMode)")
    return lines


def report(results: list[ShapeResult], config: str) -> str:
    unit, label = (1e12, "TFLOP") if config == "full" else (1e6, "MFLOP")
    lines = [f"benchmarks/cost.py --config {config}: FLOP counts on the meta device (machine-independent); "
             f"torch {torch.__version__}, diffusers {__import__('diffusers').__version__}",
             f"FLOPs in {label}; 'x dnz' = denoising only (generation, reference, inversion, matching, masks/fg) "
             "over plain's; 'other' = counted outside every part"]
    for result in results:
        lines += ["", *flop_table(result, unit)]
    if results[0].memory:
        lines += ["", *memory_table(results)]
    lines += ["", *target_lines(results[0])]
    if any(n.startswith("cached, ") for n in results[0].parts):
        lines += ["", *option_lines(results[0], unit, label)]
    return "\n".join(lines)


def _measure_one(config: str, index: int, options: bool, blocks: int | None) -> ShapeResult:
    """`measure_shape` in a worker process; returns what pickles (the shape is put back by the caller)."""
    __import__("diffusers").utils.logging.set_verbosity_error()  # "modules kept in float32" notes on meta
    shape = (full_shapes() if config == "full" else tiny_shapes())[index]
    start = time.time()
    result = measure_shape(shape, options, blocks)
    result.seconds = time.time() - start
    result.shape, result.probe.plain = None, None
    return result


def measure_all(config: str, indices: list[int], blocks: int | None, jobs: int) -> Iterator[ShapeResult]:
    """Every shape of `config` in `indices` (the first with the option variants), `jobs` processes at a time,
    yielded in order as each is done."""
    shapes = full_shapes() if config == "full" else tiny_shapes()
    work = [(config, i, n == 0, blocks) for n, i in enumerate(indices)]
    if jobs <= 1 or len(work) == 1:
        results: Iterator[ShapeResult] = (_measure_one(*w) for w in work)
        for result, index in zip(results, indices, strict=True):
            result.shape = shapes[index]
            yield result
        return
    # shapes are independent and each runs on one core: the meta device is single-threaded Python
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for result, index in zip(pool.map(_measure_one, *zip(*work, strict=True)), indices, strict=True):
            result.shape = shapes[index]
            yield result


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in full_shapes()] + [s.name for s in tiny_shapes()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--shape", choices=names, help="run only this shape")
    parser.add_argument("--only", help="run only the shapes whose name contains this")
    parser.add_argument("--memory-depth", choices=("blocks", "full", "none"), default="blocks",
                        help="plain peak from one block of each kind (default), the full depth, or skip memory")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes (default: 2)")
    args = parser.parse_args(argv)
    shapes = full_shapes() if args.config == "full" else tiny_shapes()
    if args.shape and args.shape not in [s.name for s in shapes]:
        parser.error(f"--shape {args.shape!r} is not a shape of --config {args.config}")
    indices = [i for i, s in enumerate(shapes)
               if (args.only is None or args.only in s.name) and (args.shape is None or s.name == args.shape)]
    blocks = {"blocks": 1, "full": None, "none": 0}[args.memory_depth]
    start = time.time()
    print(f"{len(indices)} shapes, {args.jobs} processes; each table is printed as soon as its shape is done",
          flush=True)
    results = []
    for result in measure_all(args.config, indices, blocks, args.jobs):
        results.append(result)
        print(f"\n== {result.shape.name}: measured in {result.seconds:.0f} s", flush=True)
        print(report([result], args.config), flush=True)
    if len(results) > 1 and results[0].memory:
        print("\n" + "\n".join(memory_table(results)), flush=True)
    print(f"\n({len(results)} shapes in {time.time() - start:.0f} s, {args.jobs} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
