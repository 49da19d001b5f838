"""The page: three tabs over one model, and the server that serves it.

`create_app` builds the gradio Blocks around an already loaded pipeline (the CLI loads it first, so a bad
model fails on the command line, before any browser opens). Every event that uses the model is in one
gradio concurrency group of size 1 (`context.MODEL_GROUP`), so requests from several tabs queue; the
`jobs.ModelRunner` underneath holds the model for one job at a time as well.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr

from . import compare_tab, generate_tab, subjects_tab
from .context import AppContext, session_of
from .jobs import ModelRunner
from .library import SubjectLibrary
from .profiles import Overrides, page_defaults

logger = logging.getLogger(__name__)

CSS = """
#study-prompt {font-size: 1.1em}
footer {display: none !important}
"""


def header(ctx: AppContext) -> str:
    return (f"# V-Warper\nPersonalise a video model with a few photos, then keep the subject's fine appearance by "
            f"value warping. Model: **{ctx.model}** ({ctx.defaults.note}).\n\n"
            "**1. Subjects**: train a subject from photos. **2. Generate**: coarse stage only beside V-Warper, with "
            "the masks and flows. **3. Compare**: rate two runs side by side (the paper's user study).")


def create_context(model: str, pipe: Any, subjects: str | Path, outputs: str | Path,
                   overrides: Overrides | None = None) -> AppContext:
    """The shared state of an app on `pipe` (`model`: the name it was loaded by: learned, tiny, an id, a path)."""
    outputs = Path(outputs).expanduser()
    outputs.mkdir(parents=True, exist_ok=True)
    library = SubjectLibrary(subjects)
    library.root.mkdir(parents=True, exist_ok=True)
    pipe.set_progress_bar_config(disable=True)
    return AppContext(model=model, runner=ModelRunner(pipe), library=library, outputs=outputs,
                      defaults=page_defaults(model, pipe, overrides))


def create_app(ctx: AppContext) -> gr.Blocks:
    """The Blocks of the app (queue on: model events one at a time, in the order they came)."""
    with gr.Blocks(title="V-Warper", analytics_enabled=False) as app:
        gr.Markdown(header(ctx), elem_id="header")
        with gr.Tabs():
            with gr.Tab("1. Subjects", id="subjects", elem_id="tab-subjects"):
                subjects = subjects_tab.build(ctx)
            with gr.Tab("2. Generate", id="generate", elem_id="tab-generate"):
                generate = generate_tab.build(ctx)
            with gr.Tab("3. Compare", id="compare", elem_id="tab-compare"):
                compare = compare_tab.build(ctx)
        subjects_tab.connect(ctx, subjects, generate.subjects)
        generate_tab.connect(ctx, generate)
        compare_tab.connect(ctx, compare)

        def on_load() -> tuple[Any, ...]:  # another tab may have trained or deleted subjects since
            options = subjects_tab.choices(ctx.library)
            return subjects_tab.table(ctx.library), gr.update(choices=options), gr.update(choices=options)

        def on_unload(request: gr.Request) -> None:  # a closed or reloaded tab: its jobs end (and clean up)
            for job in ctx.runner.active(session_of(request)):
                job.cancel()

        app.load(on_load, None, [subjects.table, subjects.pick, generate.subjects], api_name="refresh_subjects")
        app.unload(on_unload)
    app.queue(default_concurrency_limit=1)
    return app


def launch(app: gr.Blocks, ctx: AppContext, host: str = "127.0.0.1", port: int | None = None) -> str:
    """Start serving the app in the background; returns its local URL."""
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
               allowed_paths=[str(ctx.outputs.resolve()), str(ctx.library.root.resolve()), str(ctx.media)],
               css=CSS)
    return str(app.local_url)


def serve_until_interrupted() -> None:
    """Block until Ctrl-C (or SIGTERM, which the CLI turns into one)."""
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        logger.info("stopping the app")


def stop(app: gr.Blocks, ctx: AppContext) -> None:
    """Cancel running jobs and wait for them to unwind (the pipe is put back, staged files removed), then
    close the server."""
    ctx.close()
    app.close()
