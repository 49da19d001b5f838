"""The demo on the learned world model: a novel object's hidden detail, coarse only beside V-Warper.

A new world object (its detail colour never seen in training, never named in a prompt) is photographed
three times; stage 1 trains its LoRA and token on the photos; then the same prompt, seed and subject
generate with the coarse stage only and with value warping. `comparison.png` shows the photos, both
videos frame by frame and V-Warper's final masks; `demo.json` has both videos' identity and leakage
scores (`vwarper_hooks.world.scores`). Offline, CPU, about a minute on 2 cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..coarse import CoarseConfig, train_subject
from ..config import WarpConfig
from ..contract.plan import scaled_window
from ..world import LEARNED_MODEL, learned_layers, learned_pipeline
from ..world.ablation import novel_object, photos, prompt_background, prompts
from ..world.scores import score_video
from . import visualize as vis
from .generate import generate_video
from .panels import write_panels

DEMO_OBJECT = 3  # which novel object (a seed): chosen once, for a detail colour that stands out, and kept
SCALE = 6  # the 32 px frames are shown 6x larger, pixels kept sharp


def run_world_demo(out: str | Path, train_steps: int = 150, steps: int = 50, seed: int = 0,
                   stage: Any = None) -> dict[str, Any]:
    """Train, generate both variants and write comparison.png, the videos, panels and demo.json to `out`."""
    stage = stage or (lambda name, done, total: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(Path(out), train_steps, steps, seed, stage)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, train_steps: int, steps: int, seed: int, stage: Any) -> dict[str, Any]:
    clock, seconds = time.perf_counter(), {}
    stage("build", 0, 1)
    pipe = learned_pipeline()
    out.mkdir(parents=True, exist_ok=True)
    stage("build", 1, 1)
    obj, token = novel_object(DEMO_OBJECT), "<my-shape>"
    shots = photos(obj, 3, DEMO_OBJECT)
    config = CoarseConfig(steps=train_steps, rank=8, lora_lr=1e-3, token_lr=5e-3, mixed_precision="no",
                          gradient_checkpointing=False, seed=seed, batch_size=2)
    subject = train_subject(pipe, shots, token=token, class_word=f"{obj.color} {obj.texture} {obj.shape}",
                            config=config, progress=False,
                            callback=lambda step, loss: stage("train", step, train_steps))
    subject.save(out / "subject", overwrite=True)
    seconds["train"] = time.perf_counter() - clock
    prompt = prompts(obj, token, 1, DEMO_OBJECT)[0]
    layers = learned_layers()
    runs = {}
    for name, fields in (("coarse only", dict(warp=False)), ("V-Warper", {})):
        warp = WarpConfig(warp_steps=scaled_window(steps), **layers, **fields)
        stage(f"generate ({name})", 0, steps)
        runs[name] = generate_video(pipe, subject, prompt, frames=9, steps=steps, guidance=6.0, seed=seed,
                                    height=32, width=32, config=warp,
                                    on_step=lambda done, name=name: stage(f"generate ({name})", done, steps))
    seconds["generate"] = time.perf_counter() - clock - seconds["train"]
    background = prompt_background(prompt)
    scores = {name: asdict(score_video(run.video / 255.0, obj, background)) for name, run in runs.items()}
    picture = comparison(shots, runs)
    path = vis.save_png(vis.label(picture, f"{prompt}\nrows: the 3 photos | coarse only | V-Warper | "
                                           "V-Warper's final mask (white: warped)"), out / "comparison.png")
    files = {"comparison": path.name}
    for name, run in runs.items():
        stem = "coarse_only" if name == "coarse only" else "vwarper"
        files[stem] = vis.write_video(np.repeat(np.repeat(run.video, SCALE, 1), SCALE, 2), out / stem).name
    pngs, _ = write_panels(out / "panels", runs["V-Warper"])
    summary = {"model": str(LEARNED_MODEL), "prompt": prompt, "subject": {
        "shape": obj.shape, "texture": obj.texture, "color": obj.color,
        "detail_color (never in a prompt)": [round(c, 3) for c in obj.detail_color]},
        "layers": {k: list(v) if isinstance(v, tuple) else v for k, v in layers.items()},
        "warp_steps": list(scaled_window(steps)), "scores": scores, "files": files,
        "panels": {k: f"panels/{p.name}" for k, p in pngs.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary


def comparison(shots: list[Any], runs: dict[str, Any]) -> np.ndarray:
    """Rows: the photos; coarse-only frames; V-Warper frames; V-Warper's final mask at the last warp step."""
    big = SCALE * 32

    def up(image: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(image, SCALE, 0), SCALE, 1)

    rows = [[up(np.asarray(shot)) for shot in shots]]
    for run in runs.values():
        rows.append([up(frame) for frame in run.video[::2]])
    diagnostics = runs["V-Warper"].diagnostics
    if diagnostics:
        last = diagnostics[max(diagnostics)]
        mask = last.mask.reshape(-1, 8, 8).float()
        rows.append([vis.mask_image(m, big, big) for m in mask])
    return vis.grid(rows)
