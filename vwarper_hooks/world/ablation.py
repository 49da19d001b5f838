"""Paper table 2 on the learned world: coarse only / + value warping / + masking, on novel subjects.

A subject is a new world object (its detail colour and texture phase drawn here, so no training clip
had it), photographed `photos` times (still, at other places, on other backgrounds). Stage 1 trains
its LoRA and token on those photos; each prompt then names its colour, texture and shape (never the
detail) and another motion and background. The three variants of each (subject, prompt, seed) share
the subject, the seed and everything else; `scores.score_video` measures identity and leakage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..coarse.config import CoarseConfig
from ..coarse.train import train_subject
from ..config import WarpConfig
from ..contract.plan import scaled_window
from ..inject import inject
from .scene import COLORS, DIRECTIONS, WorldObject, random_object, still_photo
from .scores import score_video

VARIANTS = {
    "coarse only": dict(warp=False),
    "+ value warping": dict(mask=False),
    "+ masking (V-Warper)": {},
}


@dataclass(frozen=True)
class Trial:
    subject: int
    prompt: str
    seed: int
    variant: str
    identity: float
    detail_error: float
    leakage: float
    found: float


def novel_object(seed: int) -> WorldObject:
    """A world object from a seed range of its own (training draws from one stream seeded 1 + step)."""
    return random_object(np.random.default_rng(10_000_019 + seed))


def photos(obj: WorldObject, count: int, seed: int) -> list[Image.Image]:
    """`count` still photos of `obj` (32x32 RGB), at other places, on backgrounds other than its colour."""
    rng = np.random.default_rng(20_000_003 + seed)
    shots = [still_photo(obj, rng).render()[0][0] for _ in range(count)]
    return [Image.fromarray((shot * 255).round().astype(np.uint8)) for shot in shots]


def prompts(obj: WorldObject, token: str, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(30_000_001 + seed)
    out = []
    backgrounds = [c for c in COLORS if c != obj.color]
    for _ in range(count):
        direction = str(rng.choice(list(DIRECTIONS)))
        background = str(rng.choice(backgrounds))
        out.append(f"a {token} {obj.color} {obj.texture} {obj.shape} moving {direction} on a flat {background} "
                   "background")
    return out


def train(pipe: Any, obj: WorldObject, token: str, count: int, seed: int, steps: int, rank: int) -> Any:
    class_word = f"{obj.color} {obj.texture} {obj.shape}"
    config = CoarseConfig(steps=steps, rank=rank, lora_lr=1e-3, token_lr=5e-3, mixed_precision="no",
                          gradient_checkpointing=False, seed=seed, batch_size=2)
    return train_subject(pipe, photos(obj, count, seed), token=token, class_word=class_word, config=config,
                         progress=False)


def generate(pipe: Any, subject: Any, prompt: str, seed: int, steps: int, fields: dict[str, Any],
             layers: dict[str, Any]) -> tuple[np.ndarray, dict[int, Any]]:
    """(F, 32, 32, 3) float frames in [0, 1] of one variant, and its diagnostics (warp step -> flow and masks)."""
    config = WarpConfig(warp_steps=scaled_window(steps), **layers, **fields)
    with inject(pipe, subject, config) as session:
        out = pipe(prompt=prompt, negative_prompt="", num_frames=9, height=32, width=32, num_inference_steps=steps,
                   guidance_scale=6.0, max_sequence_length=pipe.transformer.config.max_text_seq_length,
                   generator=torch.Generator().manual_seed(seed), output_type="pt").frames[0]
        diagnostics = dict(session.diagnostics)
    return out.permute(0, 2, 3, 1).float().clamp(0, 1).numpy(), diagnostics


def prompt_background(prompt: str) -> str:
    """The background colour a `prompts` prompt names ("... on a flat blue background" -> "blue")."""
    return prompt.split(" flat ")[1].split()[0]


def run_ablation(pipe: Any, subjects: int, prompts_per: int, seeds: int, steps: int, layers: dict[str, Any],
                 train_steps: int = 150, rank: int = 8, progress: Any = None) -> list[Trial]:
    trials = []
    for s in range(subjects):
        obj, token = novel_object(s), f"<obj{s}>"
        subject = train(pipe, obj, token, count=3, seed=s, steps=train_steps, rank=rank)
        for prompt in prompts(obj, token, prompts_per, s):
            for seed in range(seeds):
                for variant, fields in VARIANTS.items():
                    video, _ = generate(pipe, subject, prompt, seed, steps, fields, layers)
                    score = score_video(video, obj, prompt_background(prompt))
                    trials.append(Trial(s, prompt, seed, variant, **asdict(score)))
                if progress is not None:
                    progress()
    return trials


def summary(trials: list[Trial]) -> list[dict[str, Any]]:
    """Per variant: mean and standard deviation of each score over all trials, and the per-trial gain over
    coarse only (mean and the share of trials where it is positive)."""
    rows = []
    base = {(t.subject, t.prompt, t.seed): t for t in trials if t.variant == "coarse only"}
    for variant in VARIANTS:
        chosen = [t for t in trials if t.variant == variant]
        gains = np.array([t.identity - base[(t.subject, t.prompt, t.seed)].identity for t in chosen])
        row: dict[str, Any] = {"variant": variant, "n": len(chosen)}
        for key in ("identity", "detail_error", "leakage", "found"):
            values = np.array([getattr(t, key) for t in chosen])
            row[key] = float(values.mean())
            row[f"{key}_std"] = float(values.std())
        row["identity_gain"] = float(gains.mean())
        row["identity_gain_positive"] = float((gains > 0).mean())
        rows.append(row)
    return rows


def warp_check(pipe: Any, subject_seed: int, layers: dict[str, Any], steps: int = 30, train_steps: int = 60,
               seed: int = 0) -> dict[str, float]:
    """One fixed subject, prompt and seed, coarse only and V-Warper: how close each video comes to the reference
    photo where V-Warper's last warp step's flow points, inside its final mask (`warp_fidelity`, lower is
    closer), and each video's identity score. The learned-feature regression test and RESULTS.md use it."""
    from .scores import warp_fidelity

    obj, token = novel_object(subject_seed), f"<obj{subject_seed}>"
    subject = train(pipe, obj, token, count=3, seed=subject_seed, steps=train_steps, rank=8)
    prompt = prompts(obj, token, 1, subject_seed)[0]
    background = prompt_background(prompt)
    runs = {"coarse": generate(pipe, subject, prompt, seed, steps, dict(warp=False), layers)[0]}
    runs["vwarper"], diagnostics = generate(pipe, subject, prompt, seed, steps, {}, layers)
    last = diagnostics[max(diagnostics)]
    photo = np.asarray(subject.images[0], dtype=np.float32) / 255.0
    result = {"mask_share": float(last.mask.float().mean())}
    for name, video in runs.items():
        result[f"{name}_fidelity"] = warp_fidelity(video, photo, last.flow.numpy(), last.mask.numpy())
        result[f"{name}_identity"] = score_video(video, obj, background).identity
    return result
