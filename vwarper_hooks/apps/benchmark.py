"""The paper's benchmark protocol: subjects x prompts, 25 frames, 50 steps, then CLIP/DINO metrics.

Jobs are sharded across processes with accelerate or torchrun and the run is resumable (a job whose
video and prompt file exist is skipped)::

    accelerate launch --num_processes 8 -m vwarper_hooks.benchmark_runner \\
        --spec benchmark.json --model THUDM/CogVideoX-5b --out runs/vwarper

With ``--context-parallel N`` (Wan), each video is split over N ranks (Ulysses; `apps.parallel`) and
the W processes make W/N videos at a time; e.g. 8 GPUs, 4 videos at once, 2 GPUs each::

    torchrun --nproc_per_node 8 -m vwarper_hooks.benchmark_runner --context-parallel 2 \\
        --spec benchmark.json --model Wan-AI/Wan2.1-T2V-14B-Diffusers --out runs/wan14b

``benchmark.json`` names the trained subject directories (``vwarper train``) and the prompts,
either per subject or as templates with ``{token}`` and ``{class_word}``::

    {"subjects": {"clock": "subjects/clock", "dog": "subjects/dog"},
     "prompts": ["a {token} {class_word} on the beach", "a {token} {class_word} in the snow"]}

The output is the layout `vwarper eval` reads (see `vwarper_hooks.evaluation`): reference photos
in ``references/<subject>/``, videos and their ``.json`` prompt files in ``videos/<subject>/``.
Without accelerate it runs everything in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import WarpConfig
from ..errors import VwarperError
from ..subject.subject import Subject
from .evaluation import DEFAULT_CLIP, DEFAULT_DINO, VIDEO_SUFFIXES, ClipEmbedder, DinoEmbedder, evaluate
from .generate import check_warp_window, generate_video
from .loading import load_pipeline
from .parallel import Layout, enable_context_parallel
from .visualize import write_video

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    index: int  # position in the full job list (seeds depend on it, not on the shard)
    subject: str
    subject_dir: Path
    name: str
    prompt: str


def load_jobs(spec_path: str | Path) -> list[Job]:
    """Every (subject, prompt) pair of a spec file, in a fixed order."""
    spec_path = Path(spec_path)
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VwarperError(f"Expected a readable JSON spec, but got {spec_path} ({exc}). "
                           "See vwarper_hooks.benchmark_runner's docstring for the format.") from None
    if not isinstance(spec, dict):
        raise VwarperError(f"Expected a JSON object in {spec_path}, but got a {type(spec).__name__}. "
                           'Write {"subjects": {...}, "prompts": [...]}.')
    subjects, prompts = spec.get("subjects"), spec.get("prompts")
    if not isinstance(subjects, dict) or not subjects or not prompts:
        raise VwarperError(f"Expected 'subjects' (name -> folder) and 'prompts' in {spec_path}, but got keys "
                           f"{sorted(spec)}. Add both.")
    jobs = []
    for name in sorted(subjects):
        folder = (spec_path.parent / str(subjects[name])).resolve()
        manifest = _manifest(folder, name)
        if isinstance(prompts, dict) and name not in prompts:
            raise VwarperError(f"Expected prompts for subject {name!r} in {spec_path}, but got prompts for "
                               f"{sorted(prompts)} only. Add a list under 'prompts' -> {name!r}.")
        templates = prompts[name] if isinstance(prompts, dict) else prompts
        for j, template in enumerate(templates):
            try:
                prompt = str(template).format(token=manifest["token"], class_word=manifest["class_word"])
            except (KeyError, IndexError, ValueError) as exc:
                raise VwarperError(f"Expected a prompt template using only {{token}} and {{class_word}}, but got "
                                   f"{template!r} ({exc!r}). Double other braces: {{{{ }}}}.") from None
            jobs.append(Job(len(jobs), name, folder, f"{j:02d}", prompt))
    return jobs


def _manifest(folder: Path, name: str) -> dict:
    """token and class word of the subject directory `folder` (named `name` in the spec)."""
    try:
        manifest = json.loads((folder / "subject.json").read_text())
        return {"token": manifest["token"], "class_word": manifest["class_word"]}
    except FileNotFoundError:
        raise VwarperError(f"Expected a subject directory for {name!r} at {folder}, but got none. "
                           "Train it with `vwarper train ... --out DIR`.") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise VwarperError(f"Expected a readable subject.json in {folder}, but got: {exc!r}. "
                           "Retrain the subject or restore the file.") from None


def is_done(out: Path, job: Job) -> bool:
    """A job is done when its prompt file (written last) and its video exist."""
    folder = out / "videos" / job.subject
    videos = (folder / f"{job.name}{suffix}" for suffix in VIDEO_SUFFIXES)
    return (folder / f"{job.name}.json").is_file() and any(v.is_file() for v in videos)


def write_references(out: Path, name: str, subject: Any) -> None:
    folder = out / "references" / name
    if folder.is_dir() and any(folder.iterdir()):
        return
    tmp = out / "references" / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(subject.images):
        image.save(tmp / f"{i:02d}.png")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process got there first
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def run_jobs(args: argparse.Namespace) -> tuple[int, int]:
    """Generate this process's share of the jobs; returns (generated, skipped)."""
    from accelerate import PartialState

    check_warp_window(args.steps, args.no_warp)
    warp = WarpConfig(warp=not args.no_warp, mask=not args.no_mask)
    # The process layout comes from the launcher (accelerate / torchrun) whatever the device: without CUDA,
    # `--multi_gpu` processes are CPU processes (gloo), so they shard the jobs as the README's command says.
    cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    layout = Layout.of(state.num_processes, state.process_index, args.context_parallel)
    out = Path(args.out)
    jobs = load_jobs(args.spec)
    mine = layout.share(jobs)
    todo = [job for job in mine if not is_done(out, job)]
    skipped = len(mine) - len(todo)
    logger.info("process %d/%d (video group %d/%d): %d jobs, %d already done", state.process_index,
                state.num_processes, layout.group, layout.groups, len(mine), skipped)
    if todo:
        pipe = load_pipeline(args.model, dtype=args.dtype, device=str(state.device))
        enable_context_parallel(pipe, layout)
        subjects: dict[str, Any] = {}
        for job in todo:
            if job.subject not in subjects:
                subjects[job.subject] = Subject.load(job.subject_dir)
                if layout.writes:
                    write_references(out, job.subject, subjects[job.subject])
            video, *_ = generate_video(pipe, subjects[job.subject], job.prompt, frames=args.frames,
                                      steps=args.steps, guidance=args.guidance, seed=args.seed + job.index,
                                      height=args.height, width=args.width, config=warp)
            if not layout.writes:
                continue  # the group's first rank writes the video every rank of the group made
            folder = out / "videos" / job.subject
            written = write_video(video, folder / f".{job.name}.tmp", fps=args.fps)
            os.replace(written, folder / f"{job.name}{written.suffix}")
            meta = {"prompt": job.prompt, "token": subjects[job.subject].token, "seed": args.seed + job.index,
                    "frames": args.frames, "steps": args.steps, "model": args.model}
            (folder / f"{job.name}.json").write_text(json.dumps(meta, indent=2))
            logger.info("process %d: %s/%s done", state.process_index, job.subject, job.name)
    state.wait_for_everyone()
    return len(todo), skipped


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vwarper_hooks.apps.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="benchmark JSON (subjects and prompts)")
    p.add_argument("--model", required=True, help="diffusers hub id or folder ('tiny': random test model)")
    p.add_argument("--out", required=True, help="run folder (resumable)")
    p.add_argument("--frames", type=int, default=25, help="frames per video (paper: 25)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (paper: 50)")
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of job i is seed + i")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="'cpu' to force CPU; default: accelerate's device")
    p.add_argument("--context-parallel", type=int, default=1, metavar="N",
                   help="ranks per video (Ulysses degree; Wan): groups of N processes each make one video")
    p.add_argument("--no-warp", action="store_true", help="ablation: coarse stage only")
    p.add_argument("--no-mask", action="store_true", help="ablation: warping without masks")
    p.add_argument("--no-eval", action="store_true", help="skip the metrics after generation")
    p.add_argument("--clip-model", default=None, help="CLIP id or folder for the metrics")
    p.add_argument("--dino-model", default=None, help="DINO id or folder for the metrics")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Generate (sharded, resumable), then score on the main process."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generated, skipped = run_jobs(args)
        from accelerate import PartialState

        state = PartialState()
        # one write with its newline: two processes share the launcher's stdout
        sys.stdout.write(f"process {state.process_index}: generated {generated}, skipped {skipped}\n")
        sys.stdout.flush()
        if state.is_main_process and not args.no_eval:
            device = str(state.device)
            clip = ClipEmbedder(args.clip_model or DEFAULT_CLIP, device=device)
            dino = DinoEmbedder(args.dino_model or DEFAULT_DINO, device=device)
            report = evaluate(args.out, clip=clip, dino=dino)
            path = report.save(Path(args.out) / "metrics.json")
            print(f"metrics {json.dumps(report.overall)} written to {path}", flush=True)
    except VwarperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
