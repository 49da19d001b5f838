"""Subcommand ui: the browser app (gradio, the optional ``ui`` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..exits import CliError
from . import checks
from .common import add_command, memory_options, open_pipeline
from .render import console, status


def register_ui(sub: Any, common: Any, formatter: Any, epilog: str) -> None:
    p = add_command(sub, "ui", common, formatter, epilog, "open the browser app: train, generate, compare (A/B study)",
             "A web page over one model in memory: Subjects (train from 1-10 uploaded photos, list, show, delete),\n"
             "Generate (coarse stage only beside V-Warper, with the mask and flow panels; progress and cancel)\n"
             "and Compare (the paper's paired preference study on two benchmark runs, with its results).\n"
             "Default --model learned: the small world model shipped with the package (offline, CPU).\n"
             'Needs the ui extra: pip install "vwarper-hooks[ui]". Stop it with Ctrl-C.')
    p.add_argument("--model", default="learned",
                   help="learned (the shipped world model), tiny (random test model), a hub id or a local folder")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--subjects", default="vwarper-ui/subjects", help="folder of saved subjects (created if missing)")
    p.add_argument("--outputs", default="vwarper-ui/outputs",
                   help="folder for generated videos, panels and study answers (created if missing)")
    for flag in ("--train-steps", "--steps", "--frames"):
        p.add_argument(flag, type=int, default=None, help=argparse.SUPPRESS)  # hidden: test sizes of the page
    memory_options(p)
    p.set_defaults(handler=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    from ..ui import require_gradio

    require_gradio()  # exit 4 with the install line, before loading anything
    if not 1 <= args.port <= 65535:
        raise CliError(f"Expected --port between 1 and 65535, but got {args.port}. Pass e.g. --port 7860.")
    for value, flag in ((args.train_steps, "--train-steps"), (args.steps, "--steps"), (args.frames, "--frames")):
        if value is not None:
            checks.at_least(value, 1, flag, "4")
    checks.device(args.device)
    for folder, flag in ((Path(args.subjects), "--subjects"), (Path(args.outputs), "--outputs")):
        checks.writable(folder.expanduser(), flag, "directory")
    pipe = open_pipeline(args)
    from ..ui.app import create_app, create_context, launch, serve_until_interrupted, stop
    from ..ui.profiles import Overrides

    with status("building the page ...", args.quiet):
        ctx = create_context(args.model, pipe, args.subjects, args.outputs,
                             Overrides(args.train_steps, args.steps, args.frames))
        app = create_app(ctx)
    try:
        url = launch(app, ctx, host=args.host, port=args.port)
        console.print(f"[green]vwarper ui[/] on {args.model}: open [bold]{url}[/] in a browser (Ctrl-C to stop). "
                      f"Subjects: {ctx.library.root}, outputs: {ctx.outputs}")
        serve_until_interrupted()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while starting: stop all the same
        pass
    finally:
        stop(app, ctx)  # running jobs are cancelled and unwind: the pipe is put back, staged files removed
    console.print("stopped: running jobs were cancelled and cleaned up")
    return 0
