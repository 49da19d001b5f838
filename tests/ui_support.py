"""Helpers of the browser-app tests: photos, two small benchmark runs, an app served in this process.

The app is started once per test module (`served`): the pipeline, the gradio server and the runner live
in the test process, so a test can look at the pipe and the runner directly while it drives the page or
the API. Sizes are the hidden test knobs of ``vwarper ui`` (`Overrides`): a few training and sampling steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vwarper_hooks.apps import visualize as vis

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
#: the test sizes: training steps, sampling steps, frames (the hidden knobs of `vwarper ui`); the README's
#: screenshot was taken at the learned model's real sizes: VWARPER_UI_SIZES=150,50,9
TEST_SIZES = tuple(int(v) for v in os.environ.get("VWARPER_UI_SIZES", "3,6,9").split(","))


def world_photos(folder: Path, count: int = 3) -> list[Path]:
    """`count` photos of one novel object of the learned world, saved as PNG files (what a user uploads)."""
    from vwarper_hooks.world.ablation import novel_object, photos

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(photos(novel_object(3), count, 3)):
        paths.append(folder / f"photo{i}.png")
        image.save(paths[-1])
    return paths


def clock_photos(count: int = 3) -> list[Path]:
    """The shipped example photos of the clock (for the tiny model)."""
    return sorted((EXAMPLES / "clock").glob("*.jpg"))[:count]


def make_runs(root: Path, pairs: int = 3) -> tuple[Path, Path]:
    """Two benchmark runs (``RUN/videos/<subject>/<name>.mp4`` + ``.json``, ``RUN/references/``) holding the
    same `pairs` videos, plus one video only run A holds. Run A's videos are reddish, run B's bluish."""
    runs = root / "run-a", root / "run-b"
    for r, run in enumerate(runs):
        for k in range(pairs + (1 if r == 0 else 0)):
            subject, name = f"subject{k % 2}", f"{k:02d}"
            folder = run / "videos" / subject
            folder.mkdir(parents=True, exist_ok=True)
            frames = np.zeros((9, 64, 64, 3), np.uint8)
            frames[..., 0 if r == 0 else 2] = 200
            frames[:, :, : 8 * (k + 1), 1] = 120  # a green band whose width tells the pairs apart
            vis.write_video(frames, folder / name)
            prompt = f"a <s{k % 2}> toy number {k} on the beach"
            (folder / f"{name}.json").write_text(json.dumps({"prompt": prompt, "token": f"<s{k % 2}>"}))
            references = run / "references" / subject
            references.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (60 + 90 * (k % 2), 160, 60)).save(references / "00.png")
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """An app being served in this process."""

    url: str
    ctx: Any
    app: Any
    root: Path

    @property
    def pipe(self) -> Any:
        return self.ctx.runner.pipe

    def outputs(self) -> list[str]:
        """Everything in the outputs folder, hidden temporaries included."""
        return sorted(str(p.relative_to(self.ctx.outputs)) for p in self.ctx.outputs.rglob("*"))


@contextlib.contextmanager
def served(model: str, root: Path) -> Iterator[Served]:
    """Load `model`, build the app at the test sizes and serve it on a free port; cancel and stop after."""
    from vwarper_hooks.apps.loading import load_pipeline
    from vwarper_hooks.apps.ui.app import create_app, create_context, launch, stop
    from vwarper_hooks.apps.ui.profiles import Overrides

    pipe = load_pipeline(model)
    ctx = create_context(model, pipe, root / "subjects", root / "outputs", Overrides(*TEST_SIZES))
    app = create_app(ctx)
    url = launch(app, ctx, port=free_port())
    try:
        yield Served(url, ctx, app, root)
    finally:
        stop(app, ctx)


def pipe_state(pipe: Any) -> dict[str, Any]:
    """What must be the same before and after any job: nothing of V-Warper or a subject left on the pipe."""
    from vwarper_hooks.apps.ui.jobs import leftovers

    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in pipe.transformer.modules())
    processors = sorted({type(p).__name__ for p in pipe.transformer.attn_processors.values()})
    return {"leftovers": leftovers(pipe), "hooks": hooks, "tokenizer": len(pipe.tokenizer),
            "processors": processors, "class": type(pipe).__name__}


def generate_args(ctx: Any, subject: str, prompt: str, steps: int | None = None, seed: int = 0) -> list[Any]:
    """The inputs of the /generate endpoint in order, at the page's defaults."""
    d = ctx.defaults
    return [[subject], prompt, d.frames, steps or d.steps, seed, d.match_layer, *d.warp_layers, *d.warp_steps,
            d.tau_fg, d.tau_cc, True, d.guidance, d.height, d.width, 1]
