"""One tiny Wan run with V-Warper, on one process or on each rank of ``torchrun --nproc_per_node P``.

    python tests/context_parallel_worker.py OUT                                   # one process
    torchrun --nproc_per_node 2 tests/context_parallel_worker.py OUT --ulysses 2  # Ulysses degree 2, gloo
    ... --family cogvideox                                                        # the tiny CogVideoX

Writes ``OUT/rank<r>.safetensors``: the stock video and the V-Warper video of the same call (a fresh subject,
then again: warm), and each warp step's flow, foreground score and masks; and ``OUT/rank<r>.json``: per call,
the bytes this rank put into each kind of collective (diffusers' own all-to-alls, and ours).
`test_context_parallel.py` compares the ranks with the one-process run, and the bytes with
``benchmarks/cost_comm.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch

STEPS = 6
HEIGHT = WIDTH = 64  # 8x8 latent, 4x4 tokens per frame
FRAMES = 5  # 2 latent frames: 32 video tokens
HEADS, LAYERS = 4, 6
HEAD_DIM = {"wan": 8, "cogvideox": 16}  # CogVideoX's 3D RoPE needs 16
CONFIG = dict(warp_steps=(2, 5), match_layer=1, warp_layers=(3, 4), fg_layers=(1, 2), tau_fg=0.3)


def count_bytes(moved: Counter) -> None:
    """Count the bytes each rank sends through diffusers' all-to-all and through ours."""
    import diffusers.models.attention_dispatch as dispatch

    from vwarper_hooks.contract.sharding import TokenShards

    stock = dispatch._all_to_all_single

    def stock_all_to_all(x: torch.Tensor, group: object) -> torch.Tensor:
        moved["stock all-to-all"] += x.numel() * x.element_size()
        return stock(x, group)

    ours_a2a, heads, tokens = TokenShards._all_to_all, TokenShards.gather_heads, TokenShards.gather_tokens
    gather, mean = TokenShards._all_gather, TokenShards.mean_over_ranks

    def all_to_all(self: TokenShards, chunks: torch.Tensor) -> torch.Tensor:
        moved["vwarper all-to-all"] += chunks.numel() * chunks.element_size()
        return ours_a2a(self, chunks)

    def gather_heads(self: TokenShards, x: torch.Tensor) -> torch.Tensor:
        moved["match features all-gather"] += x.numel() * x.element_size()
        moved["text all-gather"] -= x.numel() * x.element_size()  # counted again by _all_gather
        return heads(self, x)

    def gather_tokens(self: TokenShards, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        kind = "foreground all-gather" if x.ndim == 1 else "rotary all-gather"
        moved[kind] += x.numel() * x.element_size()
        moved["text all-gather"] -= x.numel() * x.element_size()
        return tokens(self, x, dim)

    def all_gather(self: TokenShards, x: torch.Tensor, dim: int) -> torch.Tensor:  # what is left: the text output
        moved["text all-gather"] += x.numel() * x.element_size()
        return gather(self, x, dim)

    def mean_over_ranks(self: TokenShards, x: torch.Tensor) -> torch.Tensor:
        moved["foreground all-reduce"] += x.numel() * x.element_size()
        return mean(self, x)

    dispatch._all_to_all_single = stock_all_to_all
    TokenShards._all_to_all, TokenShards._all_gather = all_to_all, all_gather
    TokenShards.mean_over_ranks = mean_over_ranks
    TokenShards.gather_heads, TokenShards.gather_tokens = gather_heads, gather_tokens


def pipeline(ulysses: int, family: str = "wan") -> object:
    """The tiny pipeline of `family` with a 4-head transformer, under Ulysses context parallelism when
    `ulysses` > 1 (`vwarper.enable_context_parallel`: Wan, diffusers' own plan; CogVideoX, its adapter's)."""
    from vwarper_hooks.porting import tiny_models

    builder = getattr(tiny_models, f"tiny_{family}_transformer")
    pipe = tiny_models.tiny_pipeline(family)
    pipe.register_modules(transformer=builder(LAYERS, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM[family]))
    if ulysses > 1:
        from diffusers import ContextParallelConfig

        # diffusers 0.42 picks each rank's device as `rank % torch.accelerator.device_count()`, which is 0
        # on a machine without an accelerator (ZeroDivisionError): the test harness says one device.
        if torch.accelerator.device_count() == 0:
            torch.accelerator.device_count = lambda: 1
        import vwarper_hooks as vwarper

        vwarper.enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=ulysses))
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--ulysses", type=int, default=1)
    parser.add_argument("--family", default="wan", choices=sorted(HEAD_DIM))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rank = 0
    if args.ulysses > 1:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
    from PIL import Image

    import vwarper_hooks as vwarper
    from vwarper_hooks.testing import tiny_call_kwargs

    moved: Counter = Counter()
    count_bytes(moved)
    pipe = pipeline(args.ulysses, args.family)
    image = Image.open(Path(vwarper.__file__).parent / "data" / "clock" / "00.jpg").convert("RGB")
    subject = vwarper.Subject.from_images([image], token="<clock>", class_word="clock")
    call = dict(num_inference_steps=STEPS, height=HEIGHT, width=WIDTH, num_frames=FRAMES, output_type="pt")
    tensors, report = {}, {}
    tensors["stock"] = pipe(**tiny_call_kwargs(**call)).frames
    report["stock"] = {kind: n for kind, n in moved.items() if n}
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(**CONFIG)) as session:
        for name in ("cold", "warm"):
            moved.clear()
            tensors[name] = pipe(**tiny_call_kwargs(**call)).frames
            report[name] = {kind: n for kind, n in moved.items() if n}
    tensors["after"] = pipe(**tiny_call_kwargs(**call)).frames  # the pipeline is stock again
    for step, record in session.diagnostics.items():
        for name in ("flow", "fg_score", "fg_mask", "cc_mask", "mask"):
            tensors[f"{name}.{step}"] = getattr(record, name).float()
    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out / f"rank{rank}.safetensors")
    report["warp_calls"] = sum(n for (kind, _, _), n in session.calls.items() if kind == "warp")
    (args.out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    if args.ulysses > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
