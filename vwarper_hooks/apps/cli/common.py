"""What every subcommand shares: adding its parser, the model and memory options, opening the pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from ..loading import DTYPES, load_pipeline
from .render import status


def add_command(sub: Any, name: str, common: Any, formatter: Any, epilog: str, summary: str, description: str) -> Any:
    return sub.add_parser(
        name, help=summary, description=description, parents=[common], formatter_class=formatter, epilog=epilog
    )


def memory_options(parser: argparse.ArgumentParser, offload: bool = True) -> None:
    group = parser.add_argument_group("model and memory")
    group.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                       help="weights dtype; auto: bfloat16 on CUDA, float32 on CPU")
    group.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    if offload:
        group.add_argument("--cpu-offload", action="store_true",
                           help="enable_model_cpu_offload(): keep only the running model on the GPU")
    group.add_argument("--vae-tiling", action="store_true", help="decode the video in tiles (less memory)")
    group.add_argument("--vae-slicing", action="store_true", help="decode one sample at a time (less memory)")


def open_pipeline(args: argparse.Namespace) -> Any:
    with status(f"loading {args.model} ...", args.quiet):
        pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device,
                             cpu_offload=getattr(args, "cpu_offload", False),
                             vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing)
    pipe.set_progress_bar_config(disable=True)  # the command shows its own bars on stderr (none with --quiet)
    return pipe
