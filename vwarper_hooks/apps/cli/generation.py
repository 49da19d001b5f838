"""Subcommand generate: one video of one or several trained subjects, optionally with its PNG panels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ... import Subject, WarpConfig
from ...units import video_units
from .. import visualize as vis
from ..exits import CliError
from ..generate import check_warp_window, generate_video
from ..loading import probe_units, require_dir
from ..panels import write_panels
from . import checks
from .common import add_command, memory_options, open_pipeline
from .render import console, err_console, stage_progress


def register_generate(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = add_command(sub, "generate", common, formatter, epilog, "generate a video of a trained subject",
             "Stage 2 of V-Warper: generate with the subject's coarse stage active and its reference\n"
             "values warped into the video (the paper's full method). --no-warp: coarse stage only;\n"
             "--no-mask: warping without the foreground / cycle masks (the paper's ablations).\n"
             "Example: vwarper generate --model THUDM/CogVideoX-5b --subject subjects/dog\n"
             "         --prompt 'a <my-dog> dog running on the beach' --out dog.mp4")
    p.add_argument("--model", required=True, help="diffusers hub id or local directory ('tiny': random test model)")
    p.add_argument("--subject", required=True, action="append",
                   help="subject directory written by `vwarper train`; repeat it for several subjects in one video")
    p.add_argument("--prompt", required=True, help="prompt containing every subject's token")
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
    p.add_argument("--references", type=int, default=1,
                   help="reference photos per subject matched at once (each token reads the best); 0: all")
    p.add_argument("--panels", default=None, help="also write mask and figure-5 PNGs to this directory")
    p.add_argument("--allow-config-mismatch", action="store_true",
                   help="use a subject trained for another transformer config (refused otherwise; only a warning)")
    memory_options(p)
    p.set_defaults(handler=run_generate)


def _generate_checks(args: argparse.Namespace) -> tuple[list[Any], Path, Path | None]:
    """Everything `vwarper generate` can check before loading the model; returns (subjects, video, panels)."""

    checks.at_least(args.frames, 1, "--frames", "25")
    checks.at_least(args.steps, 1, "--steps", "50")
    check_warp_window(args.steps, args.no_warp)
    checks.finite_positive(args.guidance, "--guidance", "6.0", allow_zero=True)
    checks.at_least(args.fps, 1, "--fps", "8")
    checks.at_least(args.references, 0, "--references", "3")
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
    subjects = [_load_subject(folder, args) for folder in args.subject]
    checks.outside_subjects(Path(args.out), args.subject, "--out", "video.mp4")
    if panels is not None:
        checks.outside_subjects(panels, args.subject, "--panels", "panels/")
    probe = probe_units(args.model)
    if probe is not None:  # a hub id or a local folder alike: their configs hold the rules
        checks.frames_and_size(probe[0], args.frames, args.height, args.width, args.model)
    return subjects, out, panels


def _load_subject(path: str, args: argparse.Namespace) -> Any:
    folder = require_dir(path, "a subject directory", "Train one with `vwarper train ... --out DIR`.")
    if not (folder / "subject.json").is_file():
        raise CliError(f"Expected a subject directory with subject.json, but got {str(folder)!r} without it. "
                       "Pass the directory written by `vwarper train`.")
    subject = Subject.load(folder, cache_inversions=True)  # prepared or earlier shapes start warm
    needs_token = subject.has_coarse or (not args.no_warp and not args.no_mask)  # the LoRA learnt the token
    if needs_token and subject.token not in args.prompt:
        raise CliError(f"Expected the prompt to contain the subject token {subject.token!r}, but got "
                       f"{args.prompt!r}. Write it in, e.g. 'a {subject.token} {subject.class_word} on the beach'.")
    return subject


def run_generate(args: argparse.Namespace) -> int:
    subjects, out, panels = _generate_checks(args)
    pipe = open_pipeline(args)
    height, width = args.height or None, args.width or None
    checks.frames_and_size(video_units(pipe), args.frames, height, width, args.model)
    for subject in subjects:
        checks.subject_fits(pipe, subject, args.allow_config_mismatch)
    config = WarpConfig(warp=not args.no_warp, mask=not args.no_mask, num_references=args.references or None)
    with stage_progress(not args.quiet) as update:
        generation = generate_video(
            pipe, subjects, args.prompt, frames=args.frames, steps=args.steps, guidance=args.guidance, seed=args.seed,
            height=args.height, width=args.width, negative_prompt=args.negative_prompt, config=config,
            on_step=lambda done: update("denoise", done, args.steps), allow_config_mismatch=args.allow_config_mismatch,
        )
    video, diagnostics, _ = generation
    targets = {"video": out, **({"panels": panels} if panels is not None and diagnostics else {})}
    with checks.staged_outputs(targets) as staging:  # every output, or none
        staged = vis.write_video(video, staging["video"] / out.name, fps=args.fps)
        if "panels" in staging:
            pngs, _ = write_panels(staging["panels"], generation)
    path = out.parent / staged.name
    console.print(f"[green]video written to {path}[/] ({len(video)} frames, {video.shape[2]}x{video.shape[1]})")
    if "panels" in targets:
        console.print(f"panels: {', '.join(str(panels / p.name) for p in pngs.values())}")
    elif panels is not None:
        err_console.print("no panels written: no warp step ran (--no-warp, or too few --steps)")
    return 0
