"""Subcommands demo, train, generate, adapters and inspect (eval / analyze live in `measure`, ui in `ui`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.panel import Panel
from rich.table import Table

from ... import CoarseConfig, Subject, train_subject
from ...images import IMAGE_SUFFIXES, load_images
from ...plugins import adapter_sources
from ...porting.families import TINY_FAMILIES
from ...units import video_units
from ..demo import DEMO_TOKEN, REAL_MODEL_HINT, DemoSettings
from ..demo import run_demo as demo
from ..exits import CliError
from ..generate import prepare_subject
from ..loading import probe_units, require_dir
from . import checks, measure
from .common import add_command, memory_options, open_pipeline
from .generation import register_generate
from .render import console, print_json, records_table, render_data, stage_progress, status
from .ui import register_ui


# ----------------------------------------------------------------------------------------- demo
def register_demo(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = add_command(sub, "demo", common, formatter, epilog, "run the offline demo (learned world model, CPU)",
             "Default (--model learned): the small text-to-video model trained on the procedural world and\n"
             "shipped with the package. A new object whose second colour no prompt names is photographed\n"
             "three times; stage 1 learns it; the same prompt and seed then generate with the coarse stage\n"
             "only and with V-Warper, side by side (comparison.png), with identity and leakage scores.\n"
             "--model tiny: the tiny RANDOM model (the machinery: masks, flows, figure 5; not quality).\n"
             "Offline, CPU, about a minute.")
    p.add_argument("--out", default="vwarper-demo", help="output directory")
    p.add_argument("--model", choices=["learned", "tiny"], default="learned",
                   help="learned: the shipped world model (default); tiny: the random test model")
    p.add_argument("--subjects", type=int, choices=[1, 2], default=1,
                   help="tiny model: 1: the clock; 2: the clock and the dog in one video (one mask row per subject)")
    p.add_argument("--references", type=int, choices=[1, 2, 3], default=1,
                   help="tiny model: reference photos per subject matched at once")
    for flag, default in (("--train-steps", None), ("--steps", None), ("--size", 128), ("--frames", 17)):
        p.add_argument(flag, type=int, default=default, help=argparse.SUPPRESS)  # hidden: test sizes
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if args.model == "learned":
        return run_learned_demo(args)
    settings = DemoSettings(train_steps=args.train_steps or 30, steps=args.steps or 12, size=args.size,
                            frames=args.frames, subjects=args.subjects, references=args.references)
    console.print(Panel("The tiny demo model has RANDOM weights: the video is noise-like on purpose. It shows "
                        "the coarse stage, reference branch, matching, masks and warping end to end.",
                        title="vwarper demo --model tiny", border_style="yellow"))
    start = time.perf_counter()
    with stage_progress(not args.quiet) as update:
        result = demo(args.out, settings, stage=update)
    table = Table(title=f"written to {result.out} in {time.perf_counter() - start:.1f} s")
    table.add_column("file")
    table.add_column("what")
    table.add_row(str(result.video), "the generated video")
    whats = {"reference": "reference photos read, by token", "frames": "every generated frame, numbered",
             "masks": "fg / cycle / final masks (rows: warp steps)",
             "figure5": "paper fig. 5: generated | reference warped by the flow | warped inside the mask",
             "figure5_tiles": "figure 5's exact pixel tiles (layout in demo.json)",
             "subjects": "each subject's final mask in its colour, and which subject each token is from",
             "references": "which reference photo each injected token reads"}
    for key, path in result.pngs.items():
        table.add_row(str(path), whats.get(key, key))
    table.add_row(str(result.summary), "settings, timings, figure-5 layout")
    table.add_row(str(result.out / "subject"), "the trained subject (LoRA, token, photos): try "
                  f"vwarper generate --model tiny --subject {result.out / 'subject'} --prompt "
                  f"'a {DEMO_TOKEN} clock in the snow' --frames 9 --steps 10 --out snow.mp4")
    console.print(table)
    console.print(Panel(f"Run the real model (GPU, ~40 GB for CogVideoX-5B; add --cpu-offload for less):\n"
                        f"{REAL_MODEL_HINT}", title="next", border_style="green"))
    return 0


def run_learned_demo(args: argparse.Namespace) -> int:
    from ..world_demo import run_world_demo  # imports the world kit (diffusers): only when asked for

    start = time.perf_counter()
    with stage_progress(not args.quiet) as update:
        summary = run_world_demo(args.out, train_steps=args.train_steps or 150, steps=args.steps or 50,
                                 stage=update)
    out = Path(args.out)
    table = Table(title=f"written to {out} in {time.perf_counter() - start:.1f} s: {summary['prompt']}")
    for column in ("", "identity (detail colour share)", "detail colour error", "leakage"):
        table.add_column(column)
    for name, score in summary["scores"].items():
        table.add_row(name, f"{score['identity']:.3f}", f"{score['detail_error']:.3f}", f"{score['leakage']:.4f}")
    console.print(table)
    console.print(f"look at {out / 'comparison.png'} (photos | coarse only | V-Warper | mask); videos: "
                  f"{', '.join(str(out / f) for k, f in summary['files'].items() if k != 'comparison')}")
    return 0


# ---------------------------------------------------------------------------------------- train
def register_train(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = add_command(sub, "train", common, formatter, epilog, "train a subject (coarse stage: LoRA + token)",
             "Stage 1 of V-Warper: LoRA on the key/value/output projections plus a new subject token,\n"
             "trained on 3-10 photos of the subject. Writes a subject directory for `vwarper generate`.\n"
             "Example: vwarper train --model THUDM/CogVideoX-5b --images photos/ --token '<my-dog>'\n"
             "         --class-word dog --out subjects/dog")
    p.add_argument("--model", required=True, help="diffusers hub id or local directory ('tiny': random test model)")
    p.add_argument("--images", required=True, help="directory of 3-10 subject photos (jpg/png/webp)")
    p.add_argument("--token", required=True, help="new subject token, unknown to the tokenizer, e.g. '<my-dog>'")
    p.add_argument("--class-word", required=True, help="the subject's category, e.g. dog")
    p.add_argument("--out", required=True, help="subject directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing subject directory")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--rank", type=int, default=128, help="LoRA rank")
    p.add_argument("--lora-lr", type=float, default=1e-4, help="LoRA learning rate")
    p.add_argument("--token-lr", type=float, default=5e-4, help="token-embedding learning rate")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="auto: bf16 on CUDA, no on CPU")
    p.add_argument("--resolution", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                   help="training size in pixels (default: the model's)")
    p.add_argument("--checkpoint-dir", default=None, help="write resumable checkpoints here")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="faster steps, much more memory (checkpointing is on by default)")
    p.add_argument("--prepare", type=int, nargs=4, action="append", metavar=("FRAMES", "HEIGHT", "WIDTH", "STEPS"),
                   help="after training, invert the reference for this generation shape and store it in the "
                        "subject directory, so the first `vwarper generate` of that shape starts warm (repeatable)")
    memory_options(p, offload=False)
    p.set_defaults(handler=run_train)


def image_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CliError(f"Expected image files ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}, but got none. "
                       "Put 3-10 photos of the subject there.")
    return files


def _train_checks(args: argparse.Namespace) -> tuple[list, Path]:
    """Everything `vwarper train` can check before loading the model; returns (photos, --out)."""
    checks.at_least(args.steps, 1, "--steps", "1000")
    checks.at_least(args.rank, 1, "--rank", "128")
    checks.finite_positive(args.lora_lr, "--lora-lr", "1e-4")
    checks.finite_positive(args.token_lr, "--token-lr", "5e-4")
    if args.resolution:
        checks.at_least(min(args.resolution), 1, "--resolution", "480 720")
    if args.resume and not args.checkpoint_dir:
        raise CliError("Expected --checkpoint-dir with --resume, but got none. Pass the folder of the run to resume.")
    checks.device(args.device)
    out = Path(args.out).expanduser()
    checks.writable(out, "--out", "directory")
    if out.exists() and not args.overwrite:
        raise CliError(f"Expected a new subject directory, but got {str(out)!r}, which exists. "
                       "Pass --overwrite or another --out.")
    if out.exists() and not (out / "subject.json").is_file() and any(out.iterdir()):
        raise CliError(f"Expected a subject directory to overwrite, but {str(out)!r} holds other files. "
                       "Choose another --out.")
    if args.checkpoint_dir:
        checks.writable(Path(args.checkpoint_dir), "--checkpoint-dir", "directory")
    for frames, height, width, steps in args.prepare or []:
        for value, name in ((frames, "FRAMES"), (height, "HEIGHT"), (width, "WIDTH"), (steps, "STEPS")):
            checks.at_least(value, 1, f"--prepare {name}", "25 480 720 50")
    files = image_files(require_dir(args.images, "a directory of subject photos", "Pass --images DIR."))
    with status(f"reading {len(files)} photos ...", args.quiet):
        photos = load_images(files)
    probe = probe_units(args.model)
    if probe is not None:
        units, default = probe
        size = tuple(args.resolution) if args.resolution else default
        if size is not None:
            checks.frames_and_size(units, None, *size, args.model, "--resolution")
            load_images(photos, min_size=units.token_grid(*size))
        for frames, height, width, _ in args.prepare or []:
            checks.frames_and_size(units, frames, height, width, args.model, "--prepare")
    return photos, out


def run_train(args: argparse.Namespace) -> int:
    photos, out = _train_checks(args)
    height, width = args.resolution or (None, None)

    def coarse_config(precision: str) -> CoarseConfig:
        return CoarseConfig(steps=args.steps, rank=args.rank, lora_lr=args.lora_lr, token_lr=args.token_lr,
                            mixed_precision=precision, height=height, width=width,
                            gradient_checkpointing=not args.no_gradient_checkpointing,
                            checkpoint_dir=args.checkpoint_dir)

    coarse_config("no")  # settings errors now, not after loading a 5B model
    pipe = open_pipeline(args)
    device = str(pipe._execution_device)
    precision = args.mixed_precision if args.mixed_precision != "auto" else ("bf16" if "cuda" in device else "no")
    config = coarse_config(precision)
    with stage_progress(not args.quiet) as update:  # on stderr, unlike the library's own bar
        subject = train_subject(pipe, photos, token=args.token, class_word=args.class_word, config=config,
                                resume=args.resume, progress=False,
                                callback=lambda step, loss: update("train", step, args.steps))
    subject.save(out, overwrite=args.overwrite)
    losses = subject.info.get("losses") or [float("nan")]
    console.print(f"[green]subject {args.token!r} saved to {out}[/] (final loss {losses[-1]:.4f})")
    _prepare(args, pipe, out)
    return 0


def _prepare(args: argparse.Namespace, pipe: Any, out: Path) -> None:
    """``--prepare``: the inversion of each shape, cached on disk in the subject directory."""
    shapes = args.prepare or []
    for frames, height, width, _ in shapes:
        checks.frames_and_size(video_units(pipe), frames, height, width, args.model, "--prepare")
    subject = Subject.load(out, pipe=pipe, cache_inversions=True) if shapes else None
    for frames, height, width, steps in shapes:
        with status(f"preparing {frames} frames at {width}x{height}, {steps} steps ...", args.quiet):
            prepare_subject(pipe, subject, frames=frames, steps=steps, height=height, width=width, guidance=6.0)
        console.print(f"prepared: {frames} frames at {width}x{height}, {steps} steps (guidance 6.0)")


# ------------------------------------------------------------------------------- adapters/inspect
def register_adapters(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = add_command(sub, "adapters", common, formatter, epilog, "list registered model adapters and their plugins",
             "Model families vwarper_hooks can inject into, and which plugin registered each\n"
             "(built-ins and third-party plugins from the 'vwarper_hooks' entry-point group).")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_adapters)


def run_adapters(args: argparse.Namespace) -> int:
    rows = [{"adapter": name, "plugin": plugin} for name, plugin in adapter_sources().items()]
    if args.json:
        print_json(rows)
    else:
        console.print(records_table(rows, title="registered adapters"))
    return 0


def register_inspect(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = add_command(sub, "inspect", common, formatter, epilog, "report how vwarper sees a model (layers, tokens, RoPE)",
             "Load a model (or build a tiny random one) and report what the adapter finds: attention\n"
             "layers, where text and video tokens sit, and whether injection can work.")
    p.add_argument("model", nargs="?", default=None, help="diffusers hub id or local directory")
    p.add_argument("--tiny", choices=list(TINY_FAMILIES), default=None,
                   help="inspect a tiny random model of this family instead")
    p.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.tiny is None):
        raise CliError("Expected exactly one of MODEL or --tiny NAME, but got "
                       f"{'both' if args.model else 'neither'}. Pass e.g. `vwarper inspect --tiny cogvideox`.")
    from ...porting.inspection import inspect_model  # imports diffusers: only for this command

    report = inspect_model(target=args.model, tiny=args.tiny)
    data = report.to_dict()
    bulky = [k for k, v in data.items() if isinstance(v, list) and any(isinstance(x, dict | list) for x in v)]
    summary = {k: v for k, v in data.items() if k not in bulky}
    if args.json:
        print_json({**summary, **{k: data[k] for k in bulky}})  # the summary first here too
        return 0
    name = args.model or "tiny " + args.tiny
    console.print(render_data(summary, title=f"inspect {name}: summary"))  # first, before the long tables
    if bulky:
        console.print(render_data({k: data[k] for k in bulky}, title=f"inspect {name}: details"))
    return 0


def _measure_commands() -> list:
    return measure.REGISTRY


REGISTRY = [register_demo, register_train, register_generate, register_adapters, register_inspect]
REGISTRY += _measure_commands()
REGISTRY.append(register_ui)
