"""Subcommands demo, train, generate, adapters and inspect (eval / analyze live in `measure`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.panel import Panel
from rich.table import Table

from ...units import video_units
from ..exits import CliError
from ..loading import DTYPES, load_pipeline, probe_units, require_dir
from . import checks
from .render import console, err_console, print_json, records_table, render_data, stage_progress, status

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _add(sub: Any, name: str, common: Any, formatter: Any, epilog: str, summary: str, description: str) -> Any:
    return sub.add_parser(
        name, help=summary, description=description, parents=[common], formatter_class=formatter, epilog=epilog
    )


def _memory_options(parser: argparse.ArgumentParser, offload: bool = True) -> None:
    group = parser.add_argument_group("model and memory")
    group.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                       help="weights dtype; auto: bfloat16 on CUDA, float32 on CPU")
    group.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    if offload:
        group.add_argument("--cpu-offload", action="store_true",
                           help="enable_model_cpu_offload(): keep only the running model on the GPU")
    group.add_argument("--vae-tiling", action="store_true", help="decode the video in tiles (less memory)")
    group.add_argument("--vae-slicing", action="store_true", help="decode one sample at a time (less memory)")


def _pipe(args: argparse.Namespace) -> Any:
    with status(f"loading {args.model} ...", args.quiet):
        pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device,
                             cpu_offload=getattr(args, "cpu_offload", False),
                             vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing)
    pipe.set_progress_bar_config(disable=True)  # the command shows its own bars on stderr (none with --quiet)
    return pipe


# ----------------------------------------------------------------------------------------- demo
def register_demo(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = _add(sub, "demo", common, formatter, epilog, "run the embedded offline demo (tiny random model, CPU)",
             "Build a tiny RANDOM CogVideoX pipeline, train a subject briefly on the shipped clock photos,\n"
             "generate with value warping and write the video plus PNG panels (reference, frames, fg /\n"
             "cycle / final masks over the warp steps, and the paper's figure-5 correspondence picture).\n"
             "Offline, CPU, well under two minutes. The pictures show the machinery, not quality.")
    p.add_argument("--out", default="vwarper-demo", help="output directory")
    for flag, default in (("--train-steps", 30), ("--steps", 12), ("--size", 128), ("--frames", 17)):
        p.add_argument(flag, type=int, default=default, help=argparse.SUPPRESS)  # hidden: test sizes
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import DEMO_TOKEN, REAL_MODEL_HINT, DemoSettings
    from ..demo import run_demo as demo

    settings = DemoSettings(train_steps=args.train_steps, steps=args.steps, size=args.size, frames=args.frames)
    console.print(Panel("The demo model has RANDOM weights: the video is noise-like on purpose. It shows "
                        "the coarse stage, reference branch, matching, masks and warping end to end.",
                        title="vwarper demo", border_style="yellow"))
    start = time.perf_counter()
    with stage_progress(not args.quiet) as update:
        result = demo(args.out, settings, stage=update)
    table = Table(title=f"written to {result.out} in {time.perf_counter() - start:.1f} s")
    table.add_column("file")
    table.add_column("what")
    table.add_row(str(result.video), "the generated video")
    whats = {"reference": "reference photos", "frames": "every generated frame",
             "masks": "fg / cycle / final masks (rows: warp steps)",
             "figure5": "paper fig. 5: generated | reference warped by the flow | warped inside the mask",
             "figure5_tiles": "figure 5's exact pixel tiles (layout in demo.json)"}
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


# ---------------------------------------------------------------------------------------- train
def register_train(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = _add(sub, "train", common, formatter, epilog, "train a subject (coarse stage: LoRA + token)",
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
    _memory_options(p, offload=False)
    p.set_defaults(handler=run_train)


def image_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CliError(f"Expected image files ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}, but got none. "
                       "Put 3-10 photos of the subject there.")
    return files


def _train_checks(args: argparse.Namespace) -> tuple[list, Path]:
    """Everything `vwarper train` can check before loading the model; returns (photos, --out)."""
    from ...images import load_images

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
    from ... import CoarseConfig, train_subject

    photos, out = _train_checks(args)
    height, width = args.resolution or (None, None)

    def coarse_config(precision: str) -> CoarseConfig:
        return CoarseConfig(steps=args.steps, rank=args.rank, lora_lr=args.lora_lr, token_lr=args.token_lr,
                            mixed_precision=precision, height=height, width=width,
                            gradient_checkpointing=not args.no_gradient_checkpointing,
                            checkpoint_dir=args.checkpoint_dir)

    coarse_config("no")  # settings errors now, not after loading a 5B model
    pipe = _pipe(args)
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
    from ... import Subject
    from ..generate import prepare_subject

    shapes = args.prepare or []
    for frames, height, width, _ in shapes:
        checks.frames_and_size(video_units(pipe), frames, height, width, args.model, "--prepare")
    subject = Subject.load(out, pipe=pipe, cache_inversions=True) if shapes else None
    for frames, height, width, steps in shapes:
        with status(f"preparing {frames} frames at {width}x{height}, {steps} steps ...", args.quiet):
            prepare_subject(pipe, subject, frames=frames, steps=steps, height=height, width=width, guidance=6.0)
        console.print(f"prepared: {frames} frames at {width}x{height}, {steps} steps (guidance 6.0)")


# ------------------------------------------------------------------------------------- generate
def register_generate(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = _add(sub, "generate", common, formatter, epilog, "generate a video of a trained subject",
             "Stage 2 of V-Warper: generate with the subject's coarse stage active and its reference\n"
             "values warped into the video (the paper's full method). --no-warp: coarse stage only;\n"
             "--no-mask: warping without the foreground / cycle masks (the paper's ablations).\n"
             "Example: vwarper generate --model THUDM/CogVideoX-5b --subject subjects/dog\n"
             "         --prompt 'a <my-dog> dog running on the beach' --out dog.mp4")
    p.add_argument("--model", required=True, help="diffusers hub id or local directory ('tiny': random test model)")
    p.add_argument("--subject", required=True, help="subject directory written by `vwarper train`")
    p.add_argument("--prompt", required=True, help="prompt containing the subject token")
    p.add_argument("--negative-prompt", default="", help="negative prompt")
    p.add_argument("--out", default="video.mp4", help="video file (mp4 when imageio-ffmpeg is installed, else gif)")
    p.add_argument("--frames", type=int, default=25, help="number of frames (paper: 25)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (paper: 50)")
    p.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale")
    p.add_argument("--height", type=int, default=None, help="height in pixels (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="width in pixels (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--fps", type=int, default=8, help="frames per second of the written video")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-warp", action="store_true", help="coarse stage only (no reference branch)")
    mode.add_argument("--no-mask", action="store_true", help="warp every video token (no fg / cycle masks)")
    p.add_argument("--panels", default=None, help="also write mask and figure-5 PNGs to this directory")
    p.add_argument("--allow-config-mismatch", action="store_true",
                   help="use a subject trained for another transformer config (refused otherwise; only a warning)")
    _memory_options(p)
    p.set_defaults(handler=run_generate)


def _generate_checks(args: argparse.Namespace) -> tuple[Any, Path, Path | None]:
    """Everything `vwarper generate` can check before loading the model; returns (subject, video, panels)."""
    from ... import Subject

    checks.at_least(args.frames, 1, "--frames", "25")
    checks.at_least(args.steps, 1, "--steps", "50")
    checks.warp_window(args.steps, args.no_warp)
    checks.finite_positive(args.guidance, "--guidance", "6.0", allow_zero=True)
    checks.at_least(args.fps, 1, "--fps", "8")
    checks.seed(args.seed)
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None:
            checks.at_least(value, 1, flag, "480")
    checks.device(args.device)
    out = Path(args.out).expanduser()
    if out.suffix.lower() in (".mp4", ".gif"):  # write_video picks the container; keep dotted names whole
        out = out.with_suffix("")
    checks.writable(Path(args.out).expanduser(), "--out", "file")
    panels = Path(args.panels).expanduser() if args.panels else None
    if panels is not None:
        checks.writable(panels, "--panels", "directory")
    folder = require_dir(args.subject, "a subject directory", "Train one with `vwarper train ... --out DIR`.")
    if not (folder / "subject.json").is_file():
        raise CliError(f"Expected a subject directory with subject.json, but got {str(folder)!r} without it. "
                       "Pass the directory written by `vwarper train`.")
    subject = Subject.load(folder, cache_inversions=True)  # prepared or earlier shapes start warm
    needs_token = subject.has_coarse or (not args.no_warp and not args.no_mask)  # the LoRA learnt the token
    if needs_token and subject.token not in args.prompt:
        raise CliError(f"Expected the prompt to contain the subject token {subject.token!r}, but got "
                       f"{args.prompt!r}. Write it in, e.g. 'a {subject.token} {subject.class_word} on the beach'.")
    probe = probe_units(args.model)
    if probe is not None:
        size = (args.height, args.width) if args.height and args.width else (None, None)
        checks.frames_and_size(probe[0], args.frames, *size, args.model)
    return subject, out, panels


def run_generate(args: argparse.Namespace) -> int:
    from ... import WarpConfig
    from .. import visualize as vis
    from ..generate import generate_video

    subject, out, panels = _generate_checks(args)
    pipe = _pipe(args)
    height, width = args.height or None, args.width or None
    checks.frames_and_size(video_units(pipe), args.frames, height, width, args.model)
    checks.subject_fits(pipe, subject, args.allow_config_mismatch)
    config = WarpConfig(warp=not args.no_warp, mask=not args.no_mask)
    with stage_progress(not args.quiet) as update:
        video, diagnostics = generate_video(
            pipe, subject, args.prompt, frames=args.frames, steps=args.steps, guidance=args.guidance, seed=args.seed,
            height=args.height, width=args.width, negative_prompt=args.negative_prompt, config=config,
            on_step=lambda done: update("denoise", done, args.steps), allow_config_mismatch=args.allow_config_mismatch,
        )
    targets = {"video": out, **({"panels": panels} if panels is not None and diagnostics else {})}
    with checks.staged_outputs(targets) as staging:  # every output, or none
        staged = vis.write_video(video, staging["video"] / out.name, fps=args.fps)
        if "panels" in staging:
            from ..demo import write_panels

            pngs, _ = write_panels(staging["panels"], subject.images, video, diagnostics)
    path = out.parent / staged.name
    console.print(f"[green]video written to {path}[/] ({len(video)} frames, {video.shape[2]}x{video.shape[1]})")
    if "panels" in targets:
        console.print(f"panels: {', '.join(str(panels / p.name) for p in pngs.values())}")
    elif panels is not None:
        err_console.print("no panels written: no warp step ran (--no-warp, or too few --steps)")
    return 0


# ------------------------------------------------------------------------------- adapters/inspect
def register_adapters(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = _add(sub, "adapters", common, formatter, epilog, "list registered model adapters and their plugins",
             "Model families vwarper_hooks can inject into, and which plugin registered each\n"
             "(built-ins and third-party plugins from the 'vwarper_hooks' entry-point group).")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_adapters)


def run_adapters(args: argparse.Namespace) -> int:
    from ...plugins import adapter_sources

    rows = [{"adapter": name, "plugin": plugin} for name, plugin in adapter_sources().items()]
    if args.json:
        print_json(rows)
    else:
        console.print(records_table(rows, title="registered adapters"))
    return 0


def register_inspect(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = _add(sub, "inspect", common, formatter, epilog, "report how vwarper sees a model (layers, tokens, RoPE)",
             "Load a model (or build a tiny random one) and report what the adapter finds: attention\n"
             "layers, where text and video tokens sit, and whether injection can work.")
    p.add_argument("model", nargs="?", default=None, help="diffusers hub id or local directory")
    p.add_argument("--tiny", choices=["cogvideox", "hunyuan_video", "wan"], default=None,
                   help="inspect a tiny random model of this family instead")
    p.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.tiny is None):
        raise CliError("Expected exactly one of MODEL or --tiny NAME, but got "
                       f"{'both' if args.model else 'neither'}. Pass e.g. `vwarper inspect --tiny cogvideox`.")
    from ...porting.inspection import inspect_model

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
    from . import measure

    return measure.REGISTRY


REGISTRY = [register_demo, register_train, register_generate, register_adapters, register_inspect]
REGISTRY += _measure_commands()
