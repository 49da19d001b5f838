"""The Generate tab: one prompt and seed with the coarse stage only beside V-Warper (the paper's ablation),
V-Warper's mask and flow panels, downloads, progress and cancel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from . import work
from .context import MODEL_GROUP, AppContext, cancel_message, code, run_job, session_of
from .subjects_tab import choices

#: panels shown in the page, in order, with their captions
PANELS = (("masks", "masks per warp step: foreground | cycle consistency | final (white: warped)"),
          ("figure5", "flow: generated frame | reference warped by the flow | warp inside the final mask"),
          ("frames", "V-Warper's frames"), ("reference", "the reference photo(s) read"))

#: gradio's marker for a progress bar (it passes a tracker of the call in its place)
PROGRESS = gr.Progress()


@dataclass
class GenerateTab:
    subjects: Any
    prompt: Any
    frames: Any
    steps: Any
    seed: Any
    settings: list[Any]  # match layer, warp layers (2), warp steps (2), tau_fg, tau_cc, mask, guidance, h, w, refs
    generate: Any
    cancel: Any
    status: Any
    coarse: Any
    vwarper: Any
    panels: Any
    downloads: Any


def build(ctx: AppContext) -> GenerateTab:
    """The tab's components (events: `connect`)."""
    d = ctx.defaults
    gr.Markdown("### Generate\nPick one or more saved subjects and write a prompt with their tokens. The same "
                "prompt and seed run twice: with the coarse stage only (LoRA + token) and with V-Warper (+ value "
                "warping from the reference photo), side by side.")
    with gr.Row():
        with gr.Column(scale=3):
            subjects = gr.Dropdown(choices=choices(ctx.library), multiselect=True, label="Subjects",
                                   allow_custom_value=True, elem_id="gen-subjects")
            prompt = gr.Textbox(label="Prompt (with each subject's token)", elem_id="prompt",
                                placeholder=d.prompt_template.format(token=d.example_token, class_word=d.example_class))
            with gr.Row():
                frames = gr.Number(label="Frames", value=d.frames, precision=0, elem_id="frames")
                steps = gr.Number(label="Steps", value=d.steps, precision=0, elem_id="steps")
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
        with gr.Column(scale=2):
            with gr.Accordion("V-Warper settings (WarpConfig)", open=False):
                with gr.Row():
                    match = gr.Number(label="Match layer", value=d.match_layer, precision=0)
                    warp_first = gr.Number(label="Warp layers: first", value=d.warp_layers[0], precision=0)
                    warp_last = gr.Number(label="last", value=d.warp_layers[1], precision=0)
                with gr.Row():
                    step_first = gr.Number(label="Warp steps: first", value=d.warp_steps[0], precision=0)
                    step_last = gr.Number(label="last", value=d.warp_steps[1], precision=0)
                    mask = gr.Checkbox(label="Masks (fg x cycle)", value=True)
                with gr.Row():
                    tau_fg = gr.Number(label="tau_fg", value=d.tau_fg)
                    tau_cc = gr.Number(label="tau_cc", value=d.tau_cc)
                    references = gr.Number(label="Photos matched (0: all)", value=1, precision=0)
                with gr.Row():
                    guidance = gr.Number(label="Guidance", value=d.guidance)
                    height = gr.Number(label="Height", value=d.height, precision=0)
                    width = gr.Number(label="Width", value=d.width, precision=0)
            with gr.Row():
                generate = gr.Button("Generate both", variant="primary", elem_id="generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="generate-cancel")
            status = gr.Markdown("", elem_id="generate-status")
    with gr.Row():
        coarse = gr.Video(label="Coarse stage only (LoRA + token)", elem_id="video-coarse", autoplay=True, loop=True,
                          height=320)
        vwarper = gr.Video(label="V-Warper (+ value warping)", elem_id="video-vwarper", autoplay=True, loop=True,
                           height=320)
    panels = gr.Gallery(label="V-Warper's panels: masks and flow (click one to enlarge)", columns=2, height=380,
                        object_fit="contain", elem_id="panels")
    downloads = gr.File(label="Download: videos, panels, settings", file_count="multiple", elem_id="downloads")
    settings = [match, warp_first, warp_last, step_first, step_last, tau_fg, tau_cc, mask, guidance, height, width,
                references]
    return GenerateTab(subjects, prompt, frames, steps, seed, settings, generate, cancel, status, coarse, vwarper,
                       panels, downloads)


def connect(ctx: AppContext, tab: GenerateTab) -> None:
    """Wire the tab's events."""
    outputs = [tab.status, tab.coarse, tab.vwarper, tab.panels, tab.downloads]
    skip = [gr.skip()] * (len(outputs) - 1)

    def on_subjects(names: list[str] | None, prompt: str) -> Any:
        entries = [e for e in ctx.library.entries() if e.name in (names or [])]
        if not entries or all(e.token in (prompt or "") for e in entries):
            return gr.skip()
        return ctx.defaults.prompt_for([(e.token, e.class_word) for e in entries])

    def on_generate(names: list[str] | None, prompt: str, frames: float, steps: float, seed: float, match: float,
                    warp_first: float, warp_last: float, step_first: float, step_last: float, tau_fg: float,
                    tau_cc: float, mask: bool, guidance: float, height: float, width: float, references: float,
                    request: gr.Request, progress: gr.Progress = PROGRESS):
        asked = work.GenerateRequest(
            subjects=list(names or []), prompt=(prompt or "").strip(), frames=frames, steps=steps, seed=seed,
            guidance=guidance, height=height, width=width, match_layer=match, warp_layers=(warp_first, warp_last),
            warp_steps=(step_first, step_last), tau_fg=tau_fg, tau_cc=tau_cc, mask=bool(mask),
            references=references or 0)
        job = ctx.runner.submit(session_of(request), "generation", lambda job, pipe: work.generate(
            job, pipe, ctx.library, ctx.defaults, asked, ctx.outputs))
        # the progress bar (over the videos) and the status say the run and its step
        result = yield from run_job(ctx.runner, job, progress, "Generating", skip, gr.Error)
        if result is None:
            return
        gallery = [(str(result.panels[k]), caption) for k, caption in PANELS if k in result.panels]
        note = "" if result.panels else " No warp step ran, so there are no panels (raise Steps)."
        yield (f"**Done** in {result.seconds:.0f} s: {code(result.folder)}.{note}", str(result.videos["coarse only"]),
               str(result.videos["V-Warper"]), gallery, [str(p) for p in result.files])

    def on_cancel(request: gr.Request) -> str:
        return cancel_message(ctx.runner, session_of(request), "generation")

    tab.subjects.change(on_subjects, [tab.subjects, tab.prompt], tab.prompt, api_name="example_prompt")
    event = tab.generate.click(on_generate, [tab.subjects, tab.prompt, tab.frames, tab.steps, tab.seed, *tab.settings],
                               outputs, api_name="generate", concurrency_id=MODEL_GROUP, concurrency_limit=1,
                               show_progress_on=[tab.coarse, tab.vwarper])
    tab.cancel.click(on_cancel, None, tab.status, api_name="cancel_generation", queue=False, cancels=[event])
