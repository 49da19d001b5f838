"""What V-Warper costs over plain generation, measured side by side in one process.

Runs the same prompt, seed, frames, size, steps and guidance through the stock pipeline and
through `vwarper.inject`, alternating (vanilla, cold, warm) per round so drift hits all three
alike, and prints per-config median wall time, peak memory and the ratios to vanilla:

- vanilla: stock diffusers, nothing installed;
- cold:    V-Warper with a fresh subject (DDIM inversion of the reference included);
- warm:    V-Warper with the subject's inversion trajectory cached by an earlier call.

It also measures the matcher + masks alone at the config's token count (extra peak memory of
`match_flows`, the foreground accumulator and the cycle mask over the features they read).

Configs:
  tiny  the 42-layer random CogVideoX test pipeline on CPU (timings of tiny models are
        dominated by Python overheads; reported as measured, not tuned)
  full  a CogVideoX-5B-shaped transformer with random bf16 weights (25 frames, 480x720) on
        CUDA; text encoder and VAE are random and smaller/real-shaped as noted below. Needs a GPU.

    python benchmarks/overhead.py --config tiny
    python benchmarks/overhead.py --config full --steps 50 --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import vwarper_hooks as vwarper

EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "clock" / "00.jpg"


class PeakMemory:
    """Peak memory during the block: CUDA allocator stats, or sampled process RSS on CPU.

    `total` is the absolute peak (weights included); `peak` the part above the level at entry.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self.total = device, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss() - self._base)

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self._base)
        self.total = self._base + self.peak


@dataclass
class Result:
    times: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)

    def add(self, seconds: float, peak: int) -> None:
        self.times.append(seconds)
        self.peaks.append(peak)


def timed(device: torch.device, fn: Callable[[], Any], result: Result) -> None:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result.add(seconds, memory.total)


def tiny_setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any], torch.device]:
    from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

    pipe = tiny_cogvideox_pipeline(tie_qk=True)
    kwargs = tiny_call_kwargs(num_inference_steps=args.steps, guidance_scale=6.0)
    kwargs.pop("generator")
    return pipe, kwargs, torch.device("cpu")


def full_setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any], torch.device]:
    """CogVideoX-5B shapes with random bf16 weights (see full_shape.py); returns latents, no decode."""
    from full_shape import full_shape_cogvideox_pipeline

    if not torch.cuda.is_available():
        raise SystemExit("the full config needs a CUDA GPU; use --config tiny on CPU")
    pipe = full_shape_cogvideox_pipeline("cuda", torch.bfloat16)
    kwargs = dict(prompt="a photo of a <clock> clock on the beach", negative_prompt="", height=480, width=720,
                  num_frames=25, num_inference_steps=args.steps, guidance_scale=6.0, output_type="latent")
    return pipe, kwargs, torch.device("cuda")


def matcher_masks_peak(grid: tuple[int, int, int], heads: int, head_dim: int, text_len: int,
                       device: torch.device, dtype: torch.dtype, chunk: int) -> int:
    """Extra peak memory of matching + foreground + cycle masks over their inputs, at this size."""
    from vwarper_hooks.fine.cycle import cycle_mask
    from vwarper_hooks.fine.foreground import ForegroundAccumulator
    from vwarper_hooks.fine.matching import match_flows

    n = grid[0] * grid[1] * grid[2]
    feats = [torch.randn(heads, n, head_dim, device=device, dtype=dtype) for _ in range(4)]
    key_text = torch.randn(heads, text_len, head_dim, device=device, dtype=dtype)
    with PeakMemory(device) as memory:
        flow, back = match_flows(*feats, frames=grid[0], per_frame=True, chunk=chunk)
        fg = ForegroundAccumulator()
        for _ in range(10):
            fg.add(feats[0], key_text, torch.tensor([3], device=device))
        mask = fg.mask(0.3)
        cycle_mask(flow, back, grid, mask, 0.1)
    return memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (paper: 50)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating (vanilla, cold, warm) rounds")
    args = parser.parse_args()

    pipe, kwargs, device = (tiny_setup if args.config == "tiny" else full_setup)(args)
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    config = vwarper.WarpConfig()  # paper defaults: layers 12 / 20-29, steps 3-19

    def call() -> None:
        with torch.no_grad():
            pipe(**kwargs, generator=torch.Generator(device).manual_seed(0))

    def new_subject() -> vwarper.Subject:
        return vwarper.Subject.from_images([image], token="<clock>", class_word="clock")

    warm_subject = new_subject()
    with vwarper.inject(pipe, warm_subject, config):
        call()  # fills the warm subject's inversion cache; also warms up kernels and allocators
    call()

    warp_calls: list[int] = []  # per injected run: proof that the timed runs really warped

    def injected(subject: vwarper.Subject) -> Callable[[], None]:
        def run() -> None:
            with vwarper.inject(pipe, subject, config) as session:
                call()
            warp_calls.append(sum(n for (kind, _, _), n in session.calls.items() if kind == "warp"))
        return run

    results = {name: Result() for name in ("vanilla", "cold", "warm")}
    for _ in range(args.rounds):
        timed(device, call, results["vanilla"])
        timed(device, injected(new_subject()), results["cold"])
        timed(device, injected(warm_subject), results["warm"])

    tc = pipe.transformer.config
    spatial = pipe.vae_scale_factor_spatial * tc.patch_size
    frames = (kwargs["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    grid = (frames, kwargs["height"] // spatial, kwargs["width"] // spatial)
    dtype = pipe.transformer.dtype
    matcher = matcher_masks_peak(grid, tc.num_attention_heads, tc.attention_head_dim, tc.max_text_seq_length,
                                 device, dtype, config.match_chunk)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"config={args.config} device={name} torch={torch.__version__} steps={args.steps} "
          f"frames={kwargs['num_frames']} size={kwargs['height']}x{kwargs['width']} "
          f"guidance={kwargs['guidance_scale']} rounds={args.rounds} token grid={grid}")
    vanilla_t = statistics.median(results["vanilla"].times)
    vanilla_m = statistics.median(results["vanilla"].peaks)
    print(f"{'variant':<8} {'median s':>9} {'ratio':>6} {'peak MiB':>9} {'ratio':>6}")
    for variant, result in results.items():
        t, m = statistics.median(result.times), statistics.median(result.peaks)
        print(f"{variant:<8} {t:9.3f} {t / vanilla_t:6.2f} {m / 2**20:9.1f} {m / max(vanilla_m, 1):6.2f}")
    print(f"matcher+masks extra peak: {matcher / 2**20:.1f} MiB = {100 * matcher / max(vanilla_m, 1):.1f}% "
          f"of vanilla peak")
    print(f"warp calls per injected run: min={min(warp_calls)} max={max(warp_calls)}")
    cache = vwarper.reference_cache(warm_subject)
    print(f"warm subject's cache: hits={cache.hits} "
          f"misses={cache.misses}")


if __name__ == "__main__":
    main()
