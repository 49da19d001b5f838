"""The GPU check in one command: full-size CogVideoX-5B (random bf16 weights), wall time, peak memory, host syncs.

    python benchmarks/gpu_check.py --out gpu_check.json          # on a CUDA GPU (~80 GB; under 8 minutes)
    python benchmarks/gpu_check.py --dry-run --out dry.json      # on the CPU, tiny model: checks the script

What it does, each part recorded (an error in one part is recorded and the rest still runs):
1. builds CogVideoX-5B at its released config with random weights in bf16 (transformer, T5-XXL, VAE);
2. trains a subject for `--lora-steps` steps (random photo), so `inject` runs with a real LoRA;
3. times plain / cold / warm / cached (feature cache) calls at 25 frames 480x720, `--steps` steps, the
   paper's windows scaled to the run (warp steps 3-19 of 50 -> 1-4 of 10; layers 12 and 20-29), the
   output kept latent (the VAE decode is the same for every variant), each with
   ``torch.cuda.max_memory_allocated`` (reset before each call);
4. runs the warm call's transformer forwards (our hooks, the reference branch, matching, masks,
   warping) under ``torch.cuda.set_sync_debug_mode("error")``, but its last one: after the loop's last
   forward V-Warper reads one flag (is the prediction finite?), counted there under "warn";
5. compares the flash and memory-efficient kernels' log-sum-exp (`attend_with_lse`) on bf16 inputs.
All of it goes to one JSON file. With ``--dry-run`` the same runs on the tiny random pipeline on the CPU;
memory is then measured with `PeakTensorMemory` and the CUDA-only parts are marked skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vwarper_hooks as vwarper  # noqa: E402
from vwarper_hooks.contract.plan import scaled_window  # noqa: E402
from vwarper_hooks.porting.memory import measure_peak  # noqa: E402

PROMPT = "a photo of a <gpu-clock> clock on the beach"


def build(dry_run: bool) -> tuple[Any, dict[str, Any]]:
    """(pipeline, call kwargs): CogVideoX-5B random bf16 on CUDA, or the tiny pipeline on the CPU."""
    if dry_run:
        from vwarper_hooks.testing import TINY_TEXT_LEN, tiny_cogvideox_pipeline

        call = dict(height=32, width=32, num_frames=9, guidance_scale=6.0, max_sequence_length=TINY_TEXT_LEN)
        return tiny_cogvideox_pipeline(), call
    from cost_models import COGVIDEOX_5B, COGVIDEOX_SCHEDULER, COGVIDEOX_VAE, T5_XXL
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vwarper_hooks.testing import tiny_tokenizer

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            transformer = CogVideoXTransformer3DModel(**COGVIDEOX_5B).eval()
            text = T5EncoderModel(T5Config(**T5_XXL)).eval()
            vae = AutoencoderKLCogVideoX(**COGVIDEOX_VAE).eval()
    finally:
        torch.set_default_dtype(previous)
    pipe = CogVideoXPipeline(tokenizer=tiny_tokenizer(), text_encoder=text, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(height=480, width=720, num_frames=25, guidance_scale=6.0, max_sequence_length=226)


def timed(run: Callable[[], Any], cuda: bool) -> dict[str, Any]:
    """Seconds and peak memory of `run()` (CUDA: max_memory_allocated; CPU: tensors created)."""
    if not cuda:
        start = time.perf_counter()
        measured = measure_peak(run)
        return {"seconds": time.perf_counter() - start, "peak_bytes": measured["peak"], "memory": "tensors created"}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"seconds": time.perf_counter() - start, "peak_bytes": peak, "peak_above_start_bytes": peak - base,
            "memory": "torch.cuda.max_memory_allocated"}


class SyncWatch:
    """Transformer forwards under ``set_sync_debug_mode("error")``, the run's last one under "warn" (counted)."""

    def __init__(self, transformer: torch.nn.Module, steps: int) -> None:
        self.transformer, self.steps, self.forwards, self.warned = transformer, steps, 0, 0
        self._handles: list[Any] = []

    def before(self, *_: Any) -> None:
        last = self.forwards == self.steps - 1
        torch.cuda.set_sync_debug_mode("warn" if last else "error")
        self.forwards += 1

    def after(self, *_: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def install_before(self) -> None:  # before inject: runs ahead of the session's pre-hook
        self._handles.append(self.transformer.register_forward_pre_hook(self.before))

    def install_after(self) -> None:  # inside inject: runs after the session's post-hook
        self._handles.append(self.transformer.register_forward_hook(self.after, always_call=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        torch.cuda.set_sync_debug_mode("default")


def lse_check(cuda: bool) -> dict[str, Any]:
    """Flash vs memory-efficient kernel: the same output and log-sum-exp on bf16 inputs."""
    if not cuda:
        return {"skipped": "no CUDA"}
    from vwarper_hooks.contract.processors import attend_with_lse, lse_kernel

    q, k, v = (torch.randn(2, 48, 4096, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, lse = attend_with_lse(q, k, v)
    ref_out, ref_lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return {"kernel": lse_kernel(q, False), "max_abs_lse_diff": float((lse - ref_lse.float()).abs().max()),
            "max_abs_out_diff": float((out.float() - ref_out.float()).abs().max())}


def check(args: argparse.Namespace) -> dict[str, Any]:
    cuda = not args.dry_run
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU: on a CPU machine, run it with --dry-run.")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                              "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                              "dry_run": args.dry_run, "steps": args.steps, "errors": {}}
    start = time.perf_counter()
    pipe, call = build(args.dry_run)
    report["build_seconds"] = time.perf_counter() - start
    report["shape"] = call
    window = scaled_window(args.steps)
    config = vwarper.WarpConfig(warp_steps=window)
    report["warp_steps"] = window
    kwargs = dict(prompt=PROMPT, negative_prompt="", num_inference_steps=args.steps, output_type="latent", **call)
    photo = Image.new("RGB", (call["width"], call["height"]), (180, 90, 40))
    try:
        coarse = vwarper.CoarseConfig(steps=args.lora_steps, rank=args.rank, height=call["height"],
                                      width=call["width"], mixed_precision="bf16" if cuda else "no")
        start = time.perf_counter()
        subject = vwarper.train_subject(pipe, [photo], token="<gpu-clock>", class_word="clock", config=coarse,
                                        progress=False)
        report["train_subject_seconds"] = time.perf_counter() - start
    except Exception:  # noqa: BLE001 - recorded; the rest runs with a subject without LoRA
        report["errors"]["train_subject"] = traceback.format_exc()
        subject = vwarper.Subject.from_images([photo], "<gpu-clock>", "clock")

    def warped(warp: vwarper.WarpConfig, watch: SyncWatch | None = None) -> Any:
        with vwarper.inject(pipe, subject, warp):
            if watch is not None:
                watch.install_after()
            return pipe(**kwargs, generator=torch.Generator().manual_seed(0))

    variants: dict[str, Any] = {}
    runs = [("plain", lambda: pipe(**kwargs, generator=torch.Generator().manual_seed(0))),
            ("cold", lambda: warped(config)), ("warm", lambda: warped(config)),
            ("fill feature cache", lambda: warped(config.updated(cache_reference_features=True))),
            ("cached", lambda: warped(config.updated(cache_reference_features=True)))]
    for name, run in runs:
        try:
            variants[name] = timed(run, cuda)
        except Exception:  # noqa: BLE001
            report["errors"][name] = traceback.format_exc()
    plain = variants.get("plain")
    for m in variants.values():
        if plain:
            m["time_x_plain"] = m["seconds"] / plain["seconds"]
            m["memory_x_plain"] = m["peak_bytes"] / plain["peak_bytes"]
    report["variants"] = variants
    report["syncs"] = {"skipped": "no CUDA"}
    if cuda:
        watch = SyncWatch(pipe.transformer, args.steps)
        watch.install_before()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warped(config, watch)
            synced = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
            report["syncs"] = {"forwards_under_error_mode": watch.forwards - 1, "last_forward_syncs": len(synced),
                               "errors": 0}
        except Exception:  # noqa: BLE001
            report["syncs"] = {"errors": 1}
            report["errors"]["syncs"] = traceback.format_exc()
        finally:
            watch.remove()
    try:
        report["lse"] = lse_check(cuda)
    except Exception:  # noqa: BLE001
        report["errors"]["lse"] = traceback.format_exc()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU (checks the script)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lora-steps", type=int, default=2)
    parser.add_argument("--rank", type=int, default=128)
    args = parser.parse_args(argv)
    report = check(args)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    for name, m in report.get("variants", {}).items():
        ratios = f"time {m.get('time_x_plain', float('nan')):.3f}, memory {m.get('memory_x_plain', float('nan')):.3f}"
        print(f"{name:>20}: {m['seconds']:8.2f} s  {m['peak_bytes'] / 2**30:8.3f} GiB  x plain: {ratios}")
    print(f"syncs: {report['syncs']}; lse: {report.get('lse')}; errors in: {sorted(report['errors']) or 'none'}")
    print(f"written to {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
