"""Subcommands eval (CLIP-I / DINO-I / CLIP-T) and analyze (per-layer PCK, paper figure 4)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from ...images import load_images
from ...units import video_units
from .. import analysis, evaluation
from .. import visualize as vis
from ..demo import sample_images
from ..exits import CliError
from ..loading import default_device, load_pipeline, require_dir
from . import checks
from .common import add_command
from .render import console, print_json, stage_progress, status


# ----------------------------------------------------------------------------------------- eval
def register_eval(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    summary = "score videos with CLIP-I, DINO-I and CLIP-T (paper table 1)"
    p = add_command(sub, "eval", common, formatter, epilog, summary,
             "Score generated videos against the subjects' reference photos (CLIP-I, DINO-I) and their\n"
             "prompts (CLIP-T, subject token removed). Layout of RUN:\n"
             "  RUN/references/<subject>/*.jpg       reference photos\n"
             "  RUN/videos/<subject>/<name>.mp4|gif  generated videos\n"
             '  RUN/videos/<subject>/<name>.json     {"prompt": "...", "token": "<x>"}\n'
             "Writes RUN/metrics.json (or --out) and prints the means per subject.")
    p.add_argument("run", help="run folder (see the layout above)")
    p.add_argument("--references", default=None, help="reference folder (default: RUN/references)")
    p.add_argument("--clip-model", default=evaluation.DEFAULT_CLIP, help="CLIP model id or folder")
    p.add_argument("--dino-model", default=evaluation.DEFAULT_DINO, help="DINO model id or folder")
    p.add_argument("--out", default=None, help="JSON file to write (default: RUN/metrics.json)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.set_defaults(handler=run_eval)


def metrics_table(report: Any) -> Table:
    table = Table(title="V-Warper metrics (higher is better)")
    for column in ("subject", "videos", "CLIP-I", "DINO-I", "CLIP-T"):
        table.add_column(column, justify="left" if column == "subject" else "right")
    counts: dict[str, int] = {}
    for video in report.videos:
        counts[video["subject"]] = counts.get(video["subject"], 0) + 1
    rows = [(s, counts[s], m) for s, m in report.subjects.items()] + [("all", len(report.videos), report.overall)]
    for name, count, m in rows:
        table.add_row(name, str(count), f"{m['clip_i']:.4f}", f"{m['dino_i']:.4f}", f"{m['clip_t']:.4f}",
                      style="bold" if name == "all" else None)
    return table


def run_eval(args: argparse.Namespace) -> int:
    run = require_dir(args.run, "a run folder", "Pass the folder holding videos/ and references/.")
    if args.references:
        require_dir(args.references, "a reference folder", "Pass --references DIR with one folder per subject.")
    evaluation.find_videos(run)  # fail fast, before loading models
    if args.out:
        checks.writable(Path(args.out), "--out", "file")
    device = checks.device(args.device) or default_device()
    with status("loading CLIP and DINO ...", args.quiet):
        clip = evaluation.ClipEmbedder(args.clip_model, device=device)
        dino = evaluation.DinoEmbedder(args.dino_model, device=device)
    with stage_progress(not args.quiet) as update:
        report = evaluation.evaluate(run, args.references, clip=clip, dino=dino,
                                     progress=lambda d, t: update("score", d, t))
    out = report.save(Path(args.out) if args.out else run / "metrics.json")
    if args.json:
        print_json(report.to_dict())
    else:
        console.print(metrics_table(report))
        console.print(f"written to {out}")
    return 0


# -------------------------------------------------------------------------------------- analyze
def register_analyze(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = add_command(sub, "analyze", common, formatter, epilog, "per-layer correspondence accuracy (paper figure 4)",
             "PCK@alpha of three descriptors at every attention layer: intermediate features, raw (post-RoPE)\n"
             "Q/K and RoPE-free Q/K. Ground truth: a synthetic known shift of the reference latent (default),\n"
             "or, with --video, DINO correspondences between the video's frames and the reference image.\n"
             "Writes pck.csv and pck.png (figure-4 style) and warps.png (figure-5 style: the reference\n"
             "warped into the generation by each descriptor's flow at the best layer) to --out.")
    p.add_argument("--model", default="tiny", help="diffusers hub id or folder ('tiny': random test model; "
                   "'learned': the world model, scored with the world's exact ground truth)")
    p.add_argument("--pairs", type=int, default=24, help="learned model: world pairs per condition")
    p.add_argument("--reference", default=None, help="reference image (default: the demo's clock photo)")
    p.add_argument("--video", default=None, help="generated video (mp4/gif): use DINO pseudo ground truth")
    p.add_argument("--matcher-model", default=None, help="DINO model id or folder for --video")
    p.add_argument("--shift", type=int, default=2, help="known shift in tokens (synthetic mode)")
    p.add_argument("--frames", type=int, default=5, help="video frames of the synthetic pair (4k+1)")
    p.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                   help="pixel size of the synthetic pair (default: the model's, enlarged until the token grid "
                        "is 4x --shift wide so that most tokens have a known match)")
    p.add_argument("--timestep", type=int, default=500, help="diffusion timestep the latents are noised to")
    p.add_argument("--alpha", type=float, default=0.05, help="PCK threshold as a fraction of the token grid")
    p.add_argument("--prompt", default="a photo", help="text conditioning of the forward pass")
    p.add_argument("--out", default="vwarper-analysis", help="output directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="weights dtype")
    p.add_argument("--device", default=None, help="torch device")
    p.set_defaults(handler=run_analyze)


def _analyze_checks(args: argparse.Namespace) -> None:
    checks.at_least(args.shift, 1, "--shift", "2")
    checks.at_least(args.frames, 1, "--frames", "5")
    checks.at_least(args.timestep, 0, "--timestep", "500")
    if not (0 < args.alpha <= 1):
        raise CliError(f"Expected --alpha in (0, 1], but got {args.alpha}. Pass e.g. --alpha 0.05.")
    if args.size:
        checks.at_least(min(args.size), 1, "--size", "480 720")
    checks.device(args.device)
    checks.writable(Path(args.out), "--out", "directory")
    if args.reference and not Path(args.reference).is_file():
        raise CliError(f"Expected a reference image file, but got {args.reference!r}, which does not exist. "
                       "Pass --reference PHOTO.jpg.")
    if args.video and not Path(args.video).is_file():
        raise CliError(f"Expected a video file, but got {args.video!r}, which does not exist. Pass --video FILE.")


def synthetic_size(pipe: Any, size: tuple[int, int] | None, shift: int) -> tuple[int, int]:
    """The pixel size of the synthetic pair: `size`, or the model's default enlarged until the token
    grid is at least 4x `shift` wide (a grid no wider than the shift has no token with a known match)."""
    units = video_units(pipe)
    config = pipe.transformer.config
    if size is None:
        sample = getattr(config, "sample_height", None), getattr(config, "sample_width", None)
        size = (sample[0] * units.spatial, sample[1] * units.spatial) if all(sample) else (480, 720)
        columns = units.token_grid(*size)[1]
        factor = -(-4 * shift // columns) if columns < 4 * shift else 1
        return size[0] * factor, size[1] * factor
    checks.frames_and_size(units, None, *size, "this model", "--size")
    if units.token_grid(*size)[1] <= shift:
        raise CliError(f"Expected --size wider than --shift {shift} tokens ({units.pixels_per_token[1]} px each), "
                       f"but got {size[1]} px. Pass a wider --size or a smaller --shift.")
    return size


def _print_best(result: Any, alpha: float) -> None:
    table = Table(title=f"best layer per descriptor ({result.mode}, grid {result.grid})")
    for column in ("descriptor", "best layer", f"PCK@{alpha:g}", "mean over layers"):
        table.add_column(column)
    for descriptor in analysis.DESCRIPTORS:
        layer, value = result.best(descriptor)
        curve = [v for v in result.curve(descriptor) if math.isfinite(v)]
        table.add_row(analysis.LABELS[descriptor], str(layer), f"{value:.3f}", f"{sum(curve) / len(curve):.3f}")
    console.print(table)


def run_world_analyze(args: argparse.Namespace) -> int:
    """Fig. 4 on the learned world model: all and far tokens, same-position share, two noise levels."""
    from ...world.correspondence import correspondence_table
    from ...world.report import fig4_markdown, plot_fig4, save_fig4_csv

    checks.at_least(args.pairs, 1, "--pairs", "24")
    checks.writable(Path(args.out), "--out", "directory")
    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device)
    conditions = [(250, True), (500, True), (250, False)]
    with status("matching world pairs at every layer ...", args.quiet):
        tables = [correspondence_table(pipe, args.pairs, t, same) for t, same in conditions]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = save_fig4_csv(tables, out / "pck.csv"), plot_fig4(tables, out / "pck.png")
    text = "\n".join(line for table in tables for line in [*fig4_markdown(table), ""])
    (out / "pck.md").write_text(text)
    console.print(text)
    console.print(f"written: {csv_path}, {png_path}, {out / 'pck.md'}")
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    if args.model == "learned":
        return run_world_analyze(args)
    _analyze_checks(args)
    if args.reference:
        reference = load_images([Path(args.reference)])[0]
    else:
        reference = sample_images()[0]
    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device)
    out = Path(args.out)
    with status("capturing features of every layer ...", args.quiet):
        if args.video:
            matcher = analysis.DinoMatcher(args.matcher_model, device=str(pipe._execution_device))
            result = analysis.dense_matcher_truth(pipe, vis.read_video(args.video), reference, matcher,
                                                  timestep=args.timestep, alpha=args.alpha, prompt=args.prompt)
        else:
            size = synthetic_size(pipe, tuple(args.size) if args.size else None, args.shift)
            result = analysis.synthetic_shift(pipe, reference, shift=args.shift, frames=args.frames, size=size,
                                              timestep=args.timestep, alpha=args.alpha, prompt=args.prompt)
    empty = [d for d in analysis.DESCRIPTORS if not any(math.isfinite(v) for v in result.curve(d))]
    if empty:  # nothing to score: no NaN table, no empty plot
        raise CliError(f"Expected tokens with a known match to score, but got none for {', '.join(empty)} "
                       f"(grid {result.grid}). Pass a larger --size or a smaller --shift.")
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = result.save_csv(out / "pck.csv"), result.plot(out / "pck.png")
    picture, layer = result.warp_figure()
    caption = f"layer {layer}, rows:\ngenerated\nwarped by: intermediate\nraw Q/K\nRoPE-free Q/K"
    warps = vis.save_png(vis.label(picture, caption), out / "warps.png")
    (out / "pck.json").write_text(json.dumps(result.to_dict(), indent=2))
    _print_best(result, args.alpha)
    console.print(f"written: {csv_path}, {png_path}, {warps}")
    return 0


REGISTRY = [register_eval, register_analyze]
