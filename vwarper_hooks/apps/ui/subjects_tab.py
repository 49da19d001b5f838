"""The Subjects tab: train a subject from uploaded photos (live progress and loss, cancel), and list, show
and delete the saved ones. Photo and token problems show the library's own messages in the page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ...errors import VwarperError
from . import work
from .context import MODEL_GROUP, AppContext, cancel_message, code, esc, run_job, session_of
from .library import SubjectLibrary

TABLE_HEADERS = ["name", "token", "class word", "photos", "training steps", "final loss"]

#: gradio's marker for a progress bar (it passes a tracker of the call in its place)
PROGRESS = gr.Progress()


@dataclass
class SubjectsTab:
    photos: Any
    preview: Any
    token: Any
    class_word: Any
    steps: Any
    rank: Any
    lora_lr: Any
    token_lr: Any
    overwrite: Any
    train: Any
    cancel: Any
    status: Any
    table: Any
    pick: Any
    show: Any
    delete: Any
    details: Any
    gallery: Any


def choices(library: SubjectLibrary) -> list[tuple[str, str]]:
    """(label, name) of every saved subject, for dropdowns."""
    return [(entry.label, entry.name) for entry in library.entries()]


def table(library: SubjectLibrary) -> list[list[Any]]:
    return [[e.name, e.token, e.class_word, len(e.photos), e.steps,
             "" if e.final_loss is None else round(e.final_loss, 4)] for e in library.entries()]


def build(ctx: AppContext) -> SubjectsTab:
    """The tab's components (events: `connect`)."""
    d = ctx.defaults
    gr.Markdown("### Train a subject\nUpload 1-10 photos of one subject (3-10 work best), name it with a new "
                "token and say what it is. Training learns the token and a LoRA (the paper's coarse stage); the "
                f"subject is saved in `{ctx.library.root}`.")
    with gr.Row():
        with gr.Column(scale=1):
            photos = gr.File(label="Photos of the subject (1-10)", file_count="multiple", file_types=["image"],
                             elem_id="photos")
            preview = gr.Gallery(label="Your photos", columns=5, height=150, elem_id="photo-preview")
        with gr.Column(scale=1):
            token = gr.Textbox(label="Token: a new word for the subject", value=d.example_token, elem_id="token")
            class_word = gr.Textbox(label="Class word: what it is", value=d.example_class, elem_id="class-word")
            steps = gr.Number(label="Training steps", value=d.train_steps, precision=0, elem_id="train-steps")
            with gr.Accordion("Training settings", open=False):
                with gr.Row():
                    rank = gr.Number(label="LoRA rank", value=d.rank, precision=0)
                    lora_lr = gr.Number(label="LoRA learning rate", value=d.lora_lr)
                    token_lr = gr.Number(label="Token learning rate", value=d.token_lr)
            overwrite = gr.Checkbox(label="Replace a saved subject with this token", value=False)
            with gr.Row():
                train = gr.Button("Train subject", variant="primary", elem_id="train")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            status = gr.Markdown("", elem_id="train-status")
    gr.Markdown("### Saved subjects")
    listing = gr.Dataframe(value=table(ctx.library), headers=TABLE_HEADERS, interactive=False, elem_id="subjects-table")
    with gr.Row():
        pick = gr.Dropdown(choices=choices(ctx.library), label="Saved subject", elem_id="subject-pick", scale=2,
                           allow_custom_value=True)
        show = gr.Button("Show", elem_id="subject-show", scale=1)
        delete = gr.Button("Delete", variant="stop", elem_id="subject-delete", scale=1)
    details = gr.Markdown("", elem_id="subject-details")
    gallery = gr.Gallery(label="Its photos", columns=6, height=150, elem_id="subject-photos")
    return SubjectsTab(photos, preview, token, class_word, steps, rank, lora_lr, token_lr, overwrite, train, cancel,
                       status, listing, pick, show, delete, details, gallery)


def refreshed(library: SubjectLibrary, picked: str | None = None) -> tuple[Any, Any, Any]:
    """New values of the table, this tab's picker (`picked` chosen) and the Generate tab's picker."""
    options = choices(library)
    names = [name for _, name in options]
    return (table(library), gr.update(choices=options, value=picked if picked in names else None),
            gr.update(choices=options))


def describe(library: SubjectLibrary, name: str | None) -> tuple[str, list[str]]:
    """A saved subject's line (token, class word, photos, training) and its photos; `gr.Error` if unknown."""
    try:
        entry = library.get(name or "")
    except VwarperError as exc:
        raise gr.Error(work.page_message(exc)) from None
    loss = "" if entry.final_loss is None else f", final loss {entry.final_loss:.4f}"
    base = f" on {esc(entry.base_model)}" if entry.base_model else ""
    text = (f"{code(entry.token)} ({esc(entry.class_word)}): {len(entry.photos)} photo(s), trained {entry.steps} "
            f"steps{base}{loss}. Folder: {code(entry.path)}")
    return text, [str(p) for p in entry.photos]


def delete(library: SubjectLibrary, name: str | None) -> tuple[Any, ...]:
    """Delete a saved subject; the outputs of the Delete button."""
    try:
        path = library.delete(name or "")
    except VwarperError as exc:
        raise gr.Error(work.page_message(exc)) from None
    return f"Deleted {code(path)}.", [], *refreshed(library)


def connect(ctx: AppContext, tab: SubjectsTab, generate_subjects: Any) -> None:
    """Wire the tab's events; `generate_subjects` is the Generate tab's subject picker (kept in sync)."""
    lists = [tab.table, tab.pick, generate_subjects]
    skip = [gr.skip()] * len(lists)

    def on_train(files: list[str] | None, token: str, class_word: str, steps: float, rank: float, lora_lr: float,
                 token_lr: float, overwrite: bool, request: gr.Request, progress: gr.Progress = PROGRESS):
        asked = work.TrainRequest(photos=list(files or []), token=(token or "").strip(), class_word=class_word or "",
                                  steps=steps, rank=rank, lora_lr=lora_lr, token_lr=token_lr, overwrite=bool(overwrite))
        job = ctx.runner.submit(session_of(request), "training",
                                lambda job, pipe: work.train(job, pipe, ctx.library, ctx.defaults, asked))
        # the progress bar (over the photos) and the status say the step and the loss
        result = yield from run_job(ctx.runner, job, progress, "Training", skip, gr.Error)
        if result is None:
            return
        losses = result.losses
        yield (f"**Saved** {code(result.token)} to {code(result.path)} in {result.seconds:.0f} s: {len(losses)} "
               f"steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}. Use it in the Generate tab.",
               *refreshed(ctx.library, result.path.name))

    def on_cancel(request: gr.Request) -> str:
        return cancel_message(ctx.runner, session_of(request), "training")

    tab.photos.change(lambda files: list(files or []), tab.photos, tab.preview, api_name="preview_photos")
    event = tab.train.click(on_train, [tab.photos, tab.token, tab.class_word, tab.steps, tab.rank, tab.lora_lr,
                                       tab.token_lr, tab.overwrite], [tab.status, *lists], api_name="train",
                            concurrency_id=MODEL_GROUP, concurrency_limit=1, show_progress_on=[tab.preview])
    tab.cancel.click(on_cancel, None, tab.status, api_name="cancel_training", queue=False, cancels=[event])
    tab.show.click(lambda name: describe(ctx.library, name), tab.pick, [tab.details, tab.gallery],
                   api_name="show_subject")
    tab.delete.click(lambda name: delete(ctx.library, name), tab.pick, [tab.details, tab.gallery, *lists],
                     api_name="delete_subject")
