"""Peak memory and time per step of coarse training (`train_subject`), measured.

    python benchmarks/coarse_memory.py --config full --steps 5     # CogVideoX-5B shapes, needs a GPU
    python benchmarks/coarse_memory.py --config tiny --steps 5     # smoke test on CPU

The full config trains at 480x720 on a CogVideoX-5B-shaped transformer and a full-size
T5-XXL-shaped encoder, all random bf16 weights (nothing downloaded), with the paper's rank 128,
bf16 autocast and gradient checkpointing (`CoarseConfig` defaults). The target is < 24 GB.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import vwarper_hooks as vwarper

IMAGES = sorted((Path(__file__).resolve().parents[1] / "examples" / "images" / "clock").glob("*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-checkpointing", action="store_true", help="measure without gradient checkpointing")
    args = parser.parse_args()

    if args.config == "full":
        if not torch.cuda.is_available():
            raise SystemExit("the full config needs a CUDA GPU; use --config tiny on CPU")
        from full_shape import full_shape_cogvideox_pipeline

        pipe = full_shape_cogvideox_pipeline("cuda", torch.bfloat16, full_t5=True)
        config = vwarper.CoarseConfig(steps=args.steps, gradient_checkpointing=not args.no_checkpointing,
                                      height=480, width=720)
    else:
        from vwarper_hooks.testing import tiny_cogvideox_pipeline

        pipe = tiny_cogvideox_pipeline()
        config = vwarper.CoarseConfig(steps=args.steps, rank=4, mixed_precision="no",
                                      gradient_checkpointing=not args.no_checkpointing)
    cuda = torch.cuda.is_available() and args.config == "full"
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int, loss: float) -> None:
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    vwarper.train_subject(pipe, IMAGES, "<sks-clock>", "clock", config, progress=False, callback=tick)
    device = torch.cuda.get_device_name() if cuda else "CPU"
    steady = times[1:] or times
    size = f"{config.height}x{config.width}" if config.height else "pipe default"
    print(f"config={args.config} device={device} rank={config.rank} mixed_precision={config.mixed_precision} "
          f"gradient_checkpointing={config.gradient_checkpointing} size={size}")
    print(f"seconds/step (after the first): {sum(steady) / len(steady):.3f}; first step {times[0]:.3f}")
    if cuda:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")


if __name__ == "__main__":
    main()
