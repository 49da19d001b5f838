"""The Compare tab: the paper's paired preference study (appendix C.2, fig. A.2) on two benchmark runs.

Each screen shows the reference photo, the prompt and the two videos (sides drawn per rater, `study`)
with the four questions; answers are recorded per rater and the rater can resume. The results view shows
run A's preference rate per question with 95% Wilson intervals (`stats`).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ...errors import VwarperError
from ...files import atomic_file
from .. import visualize as vis
from . import stats, study
from .context import AppContext, code, esc
from .work import page_message

CHOICES = ("Video 1", "Video 2")  # shown left and right
SIDE = {"Video 1": "left", "Video 2": "right"}


@dataclass
class CompareTab:
    run_a: Any
    run_b: Any
    rater: Any
    seed: Any
    results_file: Any
    start: Any
    status: Any
    screen: Any
    reference: Any
    prompt: Any
    video1: Any
    video2: Any
    questions: list[Any]
    submit: Any
    show: Any
    summary: Any
    table: Any
    plot: Any
    state: Any


def build(ctx: AppContext) -> CompareTab:
    """The tab's components (events: `connect`)."""
    gr.Markdown("### Compare two runs (the paper's user study)\nLoad two benchmark runs (`RUN/videos/<subject>/"
                "<name>.mp4` with `<name>.json` prompts, `RUN/references/<subject>/`). Each screen shows the "
                "reference photo, the prompt and both videos in an order drawn for you; answer the four questions. "
                "Answers are saved after each screen: come back with the same name to resume.")
    with gr.Row():
        run_a = gr.Textbox(label="Run A (folder)", elem_id="run-a", scale=2)
        run_b = gr.Textbox(label="Run B (folder)", elem_id="run-b", scale=2)
    with gr.Row():
        rater = gr.Textbox(label="Your name (rater)", elem_id="rater", scale=2)
        seed = gr.Number(label="Study seed", value=0, precision=0, scale=1)
        results_file = gr.Textbox(label="Results file (.csv or .json, in the outputs folder)", value="study.csv",
                                  elem_id="results-file", scale=3)
    start = gr.Button("Start or resume", variant="primary", elem_id="study-start")
    status = gr.Markdown("", elem_id="study-status")
    # always shown (empty until a study starts): gradio 6.0's page left values unset that came in the same
    # update that made their hidden group visible
    with gr.Group(elem_id="study-screen") as screen:
        with gr.Row():
            reference = gr.Image(label="Reference photo", type="filepath", interactive=False, height=220,
                                 elem_id="study-reference", scale=1)
            prompt = gr.Markdown("", elem_id="study-prompt")
        with gr.Row():
            video1 = gr.Video(label=CHOICES[0], interactive=False, autoplay=True, loop=True, height=300,
                              elem_id="study-video-1")
            video2 = gr.Video(label=CHOICES[1], interactive=False, autoplay=True, loop=True, height=300,
                              elem_id="study-video-2")
        questions = [gr.Radio(list(CHOICES), label=f"{name}: {question}", elem_id=f"q-{key}")
                     for key, name, question in study.QUESTIONS]
        submit = gr.Button("Submit and next", variant="primary", elem_id="study-submit")
    gr.Markdown("### Results")
    show = gr.Button("Show results", elem_id="study-results")
    summary = gr.Markdown("", elem_id="study-summary")
    table = gr.Dataframe(headers=["question", "answers", "run A preferred (%)", "95% interval (%)"],
                         interactive=False, elem_id="study-table")
    plot = gr.Plot(label="Preference for run A", elem_id="study-plot")
    state = gr.State({})
    return CompareTab(run_a, run_b, rater, seed, results_file, start, status, screen, reference, prompt, video1,
                      video2, questions, submit, show, summary, table, plot, state)


def _media(ctx: AppContext, path: Path) -> str:
    """A copy of `path` the server may send (runs can lie anywhere); a GIF becomes an mp4 a video tag plays."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:16]
    suffix = path.suffix.lower()
    target = ctx.media / f"{digest}{suffix}"
    if suffix == ".gif":  # re-encoded as mp4 (imageio-ffmpeg), else as a GIF again
        done = [p for p in (ctx.media / f"{digest}.mp4", target) if p.exists()]
        return str(done[0] if done else vis.write_video(vis.read_video(path), ctx.media / digest))
    if not target.exists():
        with atomic_file(target) as tmp:
            shutil.copyfile(path, tmp)
    return str(target)


def results_path(ctx: AppContext, text: str) -> Path:
    """The results file typed in the page, inside the outputs folder (the page writes nowhere else: it may be
    served to others with --host); a bare name is taken there."""
    path = Path((text or "").strip()).expanduser()
    path = (path if path.is_absolute() else ctx.outputs / path).resolve()
    root = ctx.outputs.resolve()
    if root not in path.parents or not (text or "").strip():
        raise VwarperError(f"Expected a results file inside the outputs folder {str(root)!r} (the app writes only "
                           f"there), but got {text!r}. Type a name such as study.csv.")
    return study.AnswerFile(path).path


def _runs(run_a: str, run_b: str) -> tuple[Path, Path]:
    if not (run_a or "").strip() or not (run_b or "").strip():
        raise VwarperError("Expected two run folders, but got an empty field. Type the folders of run A and run B.")
    return Path(run_a.strip()).expanduser().resolve(), Path(run_b.strip()).expanduser().resolve()


def _screen(ctx: AppContext, state: dict[str, Any]) -> tuple[Any, ...]:
    """Outputs of start / submit: the next pair of the rater, or the end of the study."""
    run_a, run_b = Path(state["run_a"]), Path(state["run_b"])
    pairs, skipped = study.load_pairs(run_a, run_b)
    answers = study.AnswerFile(state["file"])
    rows = answers.read()
    study.check_runs(rows, run_a, run_b, answers.path)
    order = study.rater_order(pairs, state["rater"], state["seed"])
    trial = study.next_trial(order, rows, state["rater"])
    mine = sum(r["rater"] == state["rater"] for r in rows)
    left_out = f" ({len(skipped)} video(s) only one run holds were left out)" if skipped else ""
    blank = [gr.update(value=None)] * len(study.QUESTIONS)
    if trial is None:
        state = {**state, "key": None}
        return (f"**Done:** {esc(state['rater'])} rated all {len(order)} pairs{left_out}. Thank you! The answers "
                f"are in {code(answers.path)}.", None, "", None, None, *blank, state)
    state = {**state, "key": list(trial.pair.key), "left": trial.left, "position": trial.position}
    pair = trial.pair
    videos = [pair.video_a, pair.video_b] if trial.left == "A" else [pair.video_b, pair.video_a]
    reference = _media(ctx, pair.reference) if pair.reference is not None else None
    head = f"**Pair {mine + 1} of {len(order)}** for {esc(state['rater'])}{left_out}."
    return (head, reference, f"**Prompt:** {esc(pair.prompt)}", _media(ctx, videos[0]),
            _media(ctx, videos[1]), *blank, state)


def connect(ctx: AppContext, tab: CompareTab) -> None:
    """Wire the tab's events."""
    screen = [tab.status, tab.reference, tab.prompt, tab.video1, tab.video2, *tab.questions, tab.state]

    def on_start(run_a: str, run_b: str, rater: str, seed: float, path: str) -> tuple[Any, ...]:
        try:
            a, b = _runs(run_a, run_b)
            state = {"run_a": str(a), "run_b": str(b), "rater": study.check_rater(rater),
                     "seed": int(seed or 0), "file": str(results_path(ctx, path))}
            return _screen(ctx, state)
        except VwarperError as exc:
            raise gr.Error(page_message(exc)) from None

    def on_submit(state: dict[str, Any], *choices: str | None) -> tuple[Any, ...]:
        try:
            if not state or not state.get("key"):
                raise VwarperError("Expected a study in progress, but got none. Press 'Start or resume' first.")
            run_a, run_b = Path(state["run_a"]), Path(state["run_b"])
            pairs, _ = study.load_pairs(run_a, run_b)
            order = study.rater_order(pairs, state["rater"], state["seed"])
            trial = next(t for t in order if list(t.pair.key) == state["key"])
            sides = {key: SIDE.get(choice or "", "") for (key, _, _), choice in zip(study.QUESTIONS, choices,
                                                                                       strict=True)}
            study.AnswerFile(state["file"]).add(study.answer_row(trial, state["rater"], sides, run_a, run_b))
            return _screen(ctx, state)
        except VwarperError as exc:
            raise gr.Error(page_message(exc)) from None

    def on_results(path: str) -> tuple[Any, ...]:
        try:
            rows = study.AnswerFile(results_path(ctx, path)).read()
        except VwarperError as exc:
            raise gr.Error(page_message(exc)) from None
        if not rows:
            return f"No answers in {code(path)} yet.", [], None
        prefs = stats.preferences(rows)
        raters = len({r["rater"] for r in rows})
        name_a, name_b = Path(rows[0]["run_a"]).name, Path(rows[0]["run_b"]).name
        text = (f"{len(rows)} answered pairs from {raters} rater(s): A = {code(rows[0]['run_a'])}, "
                f"B = {code(rows[0]['run_b'])}. Intervals: 95% Wilson score.")
        return text, stats.table(prefs), stats.results_figure(prefs, name_a, name_b, raters)

    inputs = [tab.run_a, tab.run_b, tab.rater, tab.seed, tab.results_file]
    tab.start.click(on_start, inputs, screen, api_name="study_start", concurrency_limit=4)
    results = [tab.summary, tab.table, tab.plot]
    tab.submit.click(on_submit, [tab.state, *tab.questions], screen, api_name="study_answer",
                     concurrency_limit=4).then(on_results, tab.results_file, results, api_name="study_live_results")
    tab.show.click(on_results, tab.results_file, results, api_name="study_results")
