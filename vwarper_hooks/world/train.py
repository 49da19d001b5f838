"""Train the world's text-to-video transformer: one resumable command, CPU or GPU.

    python -m vwarper_hooks.world.train --state runs/world --minutes 120        # train (resumes)
    python -m vwarper_hooks.world.train --state runs/world --export vwarper_hooks/data/world

On a GPU (found by itself, or ``--device cuda``) the same command trains in minutes: raise ``--batch``.

v-prediction on CogVideoX-5B's DDIM schedule, AdamW, EMA of the weights, 10% empty captions (for
classifier-free guidance), 20% of batches one-frame "photos" (stage 1 trains subjects on photos).
The state (model, EMA, optimiser: safetensors; counters: JSON) is written to `--state` every few
minutes, at the end and on Ctrl-C or SIGTERM; `log.jsonl` there has the loss. A last run with a lower
``--lr`` (e.g. 2e-4) anneals the weights. With no state yet, training starts from the
shipped weights when they exist (`--init`), so a lost state costs only the optimiser's moments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import CogVideoXTransformer3DModel
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .components import build_pipeline, encode_captions, to_latents, transformer_config
from .scene import random_clip

logger = logging.getLogger(__name__)
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "world"


def batch(rng: np.random.Generator, size: int, frames: int) -> tuple[torch.Tensor, list[str]]:
    clips = [random_clip(rng, frames=frames) for _ in range(size)]
    video = torch.from_numpy(np.stack([c.render()[0] for c in clips]))  # (B, F, 32, 32, 3)
    captions = [c.caption if rng.random() > 0.1 else "" for c in clips]
    return to_latents(video), captions


class Trainer:
    """The model, its EMA copy, the optimiser and the counters; `step()` trains on one batch."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.pipe = build_pipeline()
        self.model = self.pipe.transformer.to(self.device).train().requires_grad_(True)
        self.ema = CogVideoXTransformer3DModel(**transformer_config()).to(self.device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
        self.counters: dict[str, Any] = {"step": 0, "clips": 0, "seconds": 0.0, "resumed_from": None}
        sched = self.pipe.scheduler
        self.alphas = sched.alphas_cumprod.float()
        self.rope = {f: self.pipe._prepare_rotary_positional_embeddings(32, 32, f, self.device) for f in (1, 3)}

    # ------------------------------------------------------------------ state
    def save(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        for i, p in enumerate(self.model.parameters()):
            for name, value in self.opt.state.get(p, {}).items():
                tensors[f"opt.{i}.{name}"] = value.reshape(-1) if value.dim() == 0 else value
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, state / "state.safetensors.tmp")
        os.replace(state / "state.safetensors.tmp", state / "state.safetensors")
        (state / "counters.json").write_text(json.dumps(self.counters))

    def load(self, state: Path, init: Path | None) -> None:
        if (state / "state.safetensors").exists():
            tensors = load_file(state / "state.safetensors", device=str(self.device))
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
            for i, p in enumerate(self.model.parameters()):
                saved = {k.split(".")[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
                if saved:
                    saved["step"] = saved["step"].reshape(()).cpu()  # AdamW keeps its step count on the CPU
                    self.opt.state[p] = saved
            self.counters = json.loads((state / "counters.json").read_text())
            logger.info("resumed from %s at step %d", state, self.counters["step"])
        elif init is not None and (init / "transformer").exists():
            weights = load_file(init / "transformer" / "diffusion_pytorch_model.safetensors", device=str(self.device))
            self.model.load_state_dict(weights)
            self.ema.load_state_dict(weights)
            card = json.loads((init / "training.json").read_text())
            self.counters = {k: card[k] for k in ("step", "clips", "seconds")}
            self.counters["resumed_from"] = str(init)
            logger.info("started from the shipped weights in %s (step %d; fresh optimiser)", init, card["step"])

    # ------------------------------------------------------------------ training
    def step(self, rng: np.random.Generator) -> float:
        a = self.args
        frames = 1 if rng.random() < 0.2 else 3
        x0, captions = batch(rng, a.batch, frames)
        text = encode_captions(self.pipe, captions).to(self.device)
        t = torch.from_numpy(rng.integers(0, len(self.alphas), a.batch))
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(self.device)
        alpha = self.alphas[t].view(-1, 1, 1, 1, 1).to(self.device)
        x0, t = x0.to(self.device), t.to(self.device)
        noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
        target = alpha.sqrt() * noise - (1 - alpha).sqrt() * x0  # v
        lr = a.lr * min(1.0, (self.counters["step"] + 1) / 300)
        for group in self.opt.param_groups:
            group["lr"] = lr
        out = self.model(hidden_states=noisy, encoder_hidden_states=text, timestep=t,
                         image_rotary_emb=self.rope[frames], return_dict=False)[0]
        loss = F.mse_loss(out, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            decay = min(a.ema, (1 + self.counters["step"]) / (10 + self.counters["step"]))
            for e, m in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                e.mul_(decay).add_(m, alpha=1 - decay)
        self.counters["step"] += 1
        self.counters["clips"] += a.batch
        return float(loss.detach())


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    state = Path(args.state)
    trainer = Trainer(args)
    trainer.load(state, Path(args.init) if args.init else None)
    rng = np.random.default_rng(args.seed + trainer.counters["step"])
    log = (state / "log.jsonl").open("a") if state.mkdir(parents=True, exist_ok=True) is None else None
    began, last_save, running = time.time(), time.time(), None
    bar = tqdm(total=int(args.minutes * 60), unit="s", mininterval=30, desc="training")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` saves like Ctrl-C does
    try:
        while time.time() - began < args.minutes * 60:
            loss = trainer.step(rng)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            if trainer.counters["step"] % 50 == 0:
                seconds = round(trainer.counters["seconds"] + time.time() - last_save, 1)
                record = {**trainer.counters, "seconds": seconds, "lr": args.lr, "loss": round(loss, 4),
                          "smoothed": round(running, 4)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.n = int(time.time() - began)
                bar.set_postfix(step=trainer.counters["step"], loss=f"{running:.4f}")
            if time.time() - last_save > args.save_minutes * 60:
                trainer.counters["seconds"] += time.time() - last_save
                last_save = time.time()
                trainer.save(state)
    except KeyboardInterrupt:
        logger.info("interrupted: saving the state")
    trainer.counters["seconds"] += time.time() - last_save
    trainer.save(state)
    bar.close()
    logger.info("stopped at step %d (%d clips)", trainer.counters["step"], trainer.counters["clips"])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def export(args: argparse.Namespace) -> None:
    """Write the pipeline folder (EMA weights) with `training.json`, loadable by `CogVideoXPipeline.from_pretrained`."""
    state = Path(args.state)
    trainer = Trainer(args)
    trainer.load(state, None)
    pipe = build_pipeline(transformer=trainer.ema.cpu())
    out = Path(args.export)
    pipe.save_pretrained(out)
    index = json.loads((out / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]  # a class of every transformers version
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    records = [json.loads(line) for line in (state / "log.jsonl").read_text().splitlines() if line.strip()]
    card = {**{k: trainer.counters[k] for k in ("step", "clips", "seconds")}, "batch": args.batch, "lr": args.lr,
            "ema": args.ema, "config": transformer_config(),
            "loss_curve": [[r["step"], r["smoothed"]] for r in records[:: max(1, len(records) // 40)]]}
    (out / "training.json").write_text(json.dumps(card, indent=1) + "\n")
    logger.info("exported step %d to %s", trainer.counters["step"], out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", default="runs/world", help="training state folder (outside git)")
    parser.add_argument("--minutes", type=float, default=60.0, help="training time of this run")
    parser.add_argument("--export", default=None, help="write the pipeline folder here instead of training")
    parser.add_argument("--init", default=str(SHIPPED), help="weights to start from when --state is empty")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to train (default: CUDA when there is one)")
    parser.add_argument("--save-minutes", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    export(args) if args.export else train(args)


if __name__ == "__main__":
    main()
