"""Measured memory beside the estimate: plain, cold, warm and cached calls of a real random CogVideoX.

    python benchmarks/memory.py                 # medium shape (hidden 256, 14 layers, 9 frames 96x160), CPU
    python benchmarks/memory.py --shape small   # the suite's shape (seconds)

Measured: the peak bytes of the tensor storages each pipeline call creates (`PeakTensorMemory`, with the
cyclic garbage collector off, so memory a reference cycle holds counts), and what is still alive after
the call. On CUDA, `torch.cuda.max_memory_allocated` too. Estimated: `cost_memory.py`'s "extra at the
peak" for the same shape, run on the meta device. The denoising loop's output stays latent (no VAE
decode), so the peak is the transformer's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vwarper_hooks as vwarper  # noqa: E402
from vwarper_hooks.porting.memory import measure_peak  # noqa: E402
from vwarper_hooks.porting.tiny_models import tiny_cogvideox_pipeline  # noqa: E402

MiB = 2**20
PROMPT = "a photo of a <clock> clock on the beach"


@dataclass(frozen=True)
class MemoryShape:
    name: str
    transformer: dict[str, Any]  # overrides of the tiny CogVideoX transformer config
    call: dict[str, Any]
    steps: int = 6
    warp_steps: tuple[int, int] = (2, 4)


SHAPES = {
    "medium": MemoryShape("medium", dict(num_attention_heads=4, attention_head_dim=64, num_layers=14,
                                          sample_height=12, sample_width=20, sample_frames=9),
                          dict(height=96, width=160, num_frames=9)),
    "small": MemoryShape("small", dict(num_attention_heads=2, attention_head_dim=32, num_layers=8,
                                        sample_height=8, sample_width=8, sample_frames=9),
                         dict(height=64, width=64, num_frames=9)),
}


def layers(shape: MemoryShape) -> dict[str, Any]:
    """The paper's layers scaled to the shape's depth (as the cost model's tiny shapes do)."""
    from vwarper_hooks.contract.adapter import proportional_layers

    chosen = proportional_layers(shape.transformer["num_layers"])
    return dict(match_layer=chosen.match_layer, warp_layers=tuple(chosen.warp_layers))


def pipeline(shape: MemoryShape) -> Any:
    overrides = {k: v for k, v in shape.transformer.items() if k != "num_layers"}
    pipe = tiny_cogvideox_pipeline(num_layers=shape.transformer["num_layers"])
    if overrides:
        from vwarper_hooks.porting.tiny_models import tiny_cogvideox_transformer

        pipe.transformer = tiny_cogvideox_transformer(num_layers=shape.transformer["num_layers"], **overrides)
        pipe.register_modules(transformer=pipe.transformer)
    return pipe


def call_kwargs(shape: MemoryShape) -> dict[str, Any]:
    return dict(prompt=PROMPT, negative_prompt="", num_inference_steps=shape.steps, guidance_scale=6.0,
                max_sequence_length=16, output_type="latent", generator=torch.Generator().manual_seed(0), **shape.call)


def measure(shape: MemoryShape) -> dict[str, dict[str, int]]:
    """{variant: {"peak", "left"}} of one call per variant, in the order a user makes them."""
    pipe = pipeline(shape)
    subject = vwarper.Subject.from_images([Image.new("RGB", (64, 64), (200, 90, 40))], "<clock>", "clock")
    base = vwarper.WarpConfig(warp_steps=shape.warp_steps, **layers(shape))
    cached = base.updated(cache_reference_features=True)
    out = {"plain": measure_peak(lambda: pipe(**call_kwargs(shape)))}

    def warped(config: vwarper.WarpConfig) -> Any:
        with vwarper.inject(pipe, subject, config=config):
            return pipe(**call_kwargs(shape))

    out["cold"] = measure_peak(lambda: warped(base))
    out["warm"] = measure_peak(lambda: warped(base))
    measure_peak(lambda: warped(cached))  # fills the feature cache
    out["cached"] = measure_peak(lambda: warped(cached))
    return out


def estimate(shape: MemoryShape) -> int:
    """`cost_memory`'s "extra at the peak" (bytes) for the same shape, on the meta device, full depth."""
    from cost import measure_shape
    from cost_configs import Shape

    call = {**shape.call, "guidance_scale": 6.0, "max_sequence_length": 16}
    meta = Shape(shape.name, lambda: pipeline(shape), call, steps=shape.steps, warp_steps=shape.warp_steps,
                 layers=layers(shape))
    previous = torch.get_default_dtype()
    try:
        result = measure_shape(meta, memory_blocks=None)
    finally:
        torch.set_default_dtype(previous)
    return result.memory["= extra at the peak"]


def table(shape: MemoryShape, measured: dict[str, dict[str, int]], estimated: int) -> list[str]:
    plain = measured["plain"]["peak"]
    lines = [f"{shape.name}: peak of tensors a call creates (MiB), garbage collector off",
             f"{'variant':<8} {'peak':>9} {'extra':>9} {'left after':>11}"]
    for name, m in measured.items():
        lines.append(f"{name:<8} {m['peak'] / MiB:>9.2f} {(m['peak'] - plain) / MiB:>9.2f} {m['left'] / MiB:>11.2f}")
    lines.append(f"estimate of the extra (cost_memory.py): {estimated / MiB:.2f} MiB; "
                 f"warm measured {(measured['warm']['peak'] - plain) / MiB:.2f} MiB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="medium")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    start = time.time()
    measured = measure(shape)
    estimated = estimate(shape)
    print("\n".join(table(shape, measured, estimated)))
    print(f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
