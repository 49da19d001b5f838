"""The browser app through its API (gradio_client) on the learned model, served once for the module: train,
generate, the library's messages for bad input, cancel (nothing written, the pipe put back), and a second
session queued behind a running job without changing its video."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

if importlib.util.find_spec("gradio") is None and os.environ.get("VWARPER_REQUIRE_BROWSER") == "1":
    pytest.fail('VWARPER_REQUIRE_BROWSER=1, but gradio is missing: pip install "vwarper-hooks[ui]"', pytrace=False)
pytest.importorskip("gradio", reason='the browser app needs its extra: pip install "vwarper-hooks[ui]"')
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client comes with gradio")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from ui_support import free_port, generate_args, make_runs, pipe_state, served, world_photos  # noqa: E402

from vwarper_hooks import Subject  # noqa: E402
from vwarper_hooks.apps import visualize as vis  # noqa: E402
from vwarper_hooks.apps.ui.jobs import Cancelled  # noqa: E402
from vwarper_hooks.subject.token import token_problems  # noqa: E402

TOKEN = "<ui-shape>"
PROMPT = f"a {TOKEN} orange striped circle moving left on a flat blue background"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with served("learned", tmp_path_factory.mktemp("ui-api")) as s:
        yield s


@pytest.fixture(scope="module")
def photos(app) -> list[Path]:
    return world_photos(app.root / "photos")


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def train_args(photos: list[Path], token: str = TOKEN, steps: int = 3) -> list:
    return [[handle_file(str(p)) for p in photos], token, "orange striped circle", steps, 4, 1e-3, 5e-3, False]


@pytest.fixture(scope="module")
def trained(app, client, photos) -> str:
    before = pipe_state(app.pipe)
    status, table, _, _ = client.predict(*train_args(photos), api_name="/train")
    assert status.startswith("**Saved**") and "ui-shape" in status
    assert pipe_state(app.pipe) == before and before["leftovers"] == []
    return "ui-shape"


@pytest.fixture(scope="module")
def generated(app, client, trained) -> tuple:
    before = pipe_state(app.pipe)
    result = client.predict(*generate_args(app.ctx, trained, PROMPT), api_name="/generate")
    assert pipe_state(app.pipe) == before
    return result


def test_training_saves_a_loadable_subject_and_lists_it(app, trained):
    folder = app.ctx.library.root / trained
    subject = Subject.load(folder, pipe=app.pipe)
    assert subject.token == TOKEN and len(subject.images) == 3
    assert len(subject.info["losses"]) == 3  # the test size of training steps
    assert [e.name for e in app.ctx.library.entries()] == [trained]


def test_saved_subjects_are_shown_and_deleted(app, client, trained):
    shutil.copytree(app.ctx.library.root / trained, app.ctx.library.root / "ui-copy")
    text, photos = client.predict("ui-copy", api_name="/show_subject")
    assert text.startswith("`<ui-shape>` (orange striped circle): 3 photo(s), trained 3 steps")
    assert len(photos) == 3
    details, _, table, _, _ = client.predict("ui-copy", api_name="/delete_subject")
    assert details.startswith("Deleted") and not (app.ctx.library.root / "ui-copy").exists()
    assert [row[0] for row in table["data"]] == [trained]
    with pytest.raises(AppError, match="Expected a saved subject, but got 'ui-copy'"):
        client.predict("ui-copy", api_name="/delete_subject")
    with pytest.raises(AppError, match="Expected a saved subject"):
        client.predict("../subjects", api_name="/show_subject")


@pytest.mark.parametrize("token", ["circle", "<ui bad>"])
def test_a_bad_token_gets_the_librarys_own_message(app, client, photos, token):
    expected = token_problems(app.pipe.tokenizer, token)
    assert expected  # a word the tokenizer knows, a token with a space
    with pytest.raises(AppError) as info:
        client.predict(*train_args(photos, token=token), api_name="/train")
    assert str(info.value).strip() == expected[0]


def test_bad_photos_get_clear_messages(app, client, photos, trained, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    with pytest.raises(AppError, match=r"Expected a readable image file as reference image #1"):
        client.predict(*train_args([photos[0], broken], token="<ui-broken>"), api_name="/train")
    with pytest.raises(AppError, match=r"Expected 1-10 photos of the subject .* but got 11"):
        client.predict(*train_args(photos[:1] * 11, token="<ui-many>"), api_name="/train")
    with pytest.raises(AppError, match=r"Expected 1-10 photos of the subject .* but got 0"):
        client.predict(*train_args([], token="<ui-none>"), api_name="/train")
    small = tmp_path / "small.png"
    Image.new("RGB", (4, 4), (200, 30, 30)).save(small)
    with pytest.raises(AppError, match=r"Expected reference image #0 of at least 8x8 pixels .* but got 4x4"):
        client.predict(*train_args([small], token="<ui-small>"), api_name="/train")
    assert [e.name for e in app.ctx.library.entries()] == [trained]


def test_generation_writes_both_videos_the_panels_and_the_settings(app, generated):
    status, coarse, vwarper, panels, downloads = generated
    assert status.startswith("**Done**")
    folder = next(p for p in app.ctx.outputs.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert {"coarse_only.mp4", "vwarper.mp4", "settings.json", "panels/masks.png", "panels/figure5.png"} <= set(names)
    videos = [vis.read_video(coarse["video"] if isinstance(coarse, dict) else coarse),
              vis.read_video(vwarper["video"] if isinstance(vwarper, dict) else vwarper)]
    d = app.ctx.defaults
    assert videos[0].shape == (d.frames, d.height * d.display_scale, d.width * d.display_scale, 3)
    assert videos[0].shape == videos[1].shape and (videos[0] != videos[1]).any()  # V-Warper changed the video
    captions = [item["caption"] for item in panels]
    assert captions[0].startswith("masks per warp step") and captions[1].startswith("flow:")
    assert sorted(Path(p).name for p in downloads) == sorted(
        ["coarse_only.mp4", "vwarper.mp4", "settings.json", "masks.png", "figure5.png", "frames.png", "reference.png"])


def _wait_running(app, kind: str, steps: int = 2, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = app.ctx.runner.running()
        if job is not None and job.kind == kind and job.progress.done >= steps:
            return job
        time.sleep(0.02)
    raise AssertionError(f"no {kind} reached step {steps} in {timeout} s")


def test_cancelling_a_generation_writes_nothing_and_puts_the_pipe_back(app, client, trained, generated):
    before, outputs = pipe_state(app.pipe), app.outputs()
    submitted = client.submit(*generate_args(app.ctx, trained, PROMPT, steps=400), api_name="/generate")
    job = _wait_running(app, "generation", steps=8)  # inside V-Warper's run would do too: the coarse run is first
    submitted.cancel()  # gradio's own cancel: it closes the page handler, which cancels the job
    assert job.wait(60)
    assert isinstance(job.error, Cancelled) and job.progress.done < job.progress.total
    assert app.outputs() == outputs  # no video, no panels, no temporary folder
    assert pipe_state(app.pipe) == before


def test_the_cancel_button_stops_a_training_without_saving(app, client, photos, trained):
    before = pipe_state(app.pipe)
    submitted = client.submit(*train_args(photos, token="<ui-long>", steps=5000), api_name="/train")
    job = _wait_running(app, "training", steps=2)
    message = client.predict(api_name="/cancel_training")  # the same session as the training
    assert message.startswith("**Cancelled:** The training was cancelled (training &lt;ui-long&gt;: step ")
    assert job.done and isinstance(job.error, Cancelled) and job.progress.done < 5000
    submitted.result(timeout=60) if not submitted.done() else None
    assert not (app.ctx.library.root / "ui-long").exists()
    assert sorted(p.name for p in app.ctx.library.root.iterdir()) == [trained]
    assert pipe_state(app.pipe) == before
    assert client.predict(api_name="/cancel_training").startswith("Nothing to cancel")


def test_a_second_session_waits_in_the_queue_and_changes_nothing_of_the_running_video(app, photos, trained,
                                                                                   generated):
    first, second = Client(app.url, verbose=False), Client(app.url, verbose=False)
    before = pipe_state(app.pipe)
    running = first.submit(*generate_args(app.ctx, trained, PROMPT), api_name="/generate")
    job = _wait_running(app, "generation", steps=1)
    queued = second.submit(*train_args(photos, token="<ui-second>"), api_name="/train")  # a LoRA, mid-run
    seen = set()
    while not job.done:
        seen.add(queued.status().code.name)
        time.sleep(0.02)
    assert "IN_QUEUE" in seen, seen
    video = vis.read_video(running.result(timeout=120)[2])
    assert queued.result(timeout=120)[0].startswith("**Saved**")
    assert (video == vis.read_video(generated[2])).all()  # the very video a run alone gives
    jobs = [j for j in app.ctx.runner.history if j.session in (first.session_hash, second.session_hash)]
    assert [j.kind for j in jobs] == ["generation", "training"]
    assert jobs[1].started >= jobs[0].finished  # one job at a time
    assert pipe_state(app.pipe) == before


def test_a_rater_resumes_the_study_in_a_new_session_and_the_results_count_the_answers(app, tmp_path):
    run_a, run_b = make_runs(tmp_path, pairs=3)
    with pytest.raises(AppError, match="Expected a results file inside the outputs folder"):
        Client(app.url, verbose=False).predict(str(run_a), str(run_b), "ann", 0, str(tmp_path / "answers.json"),
                                               api_name="/study_start")
    results = app.ctx.outputs / "study" / "answers.json"
    start = [str(run_a), str(run_b), "ann", 0, "study/answers.json"]
    first = Client(app.url, verbose=False)
    screen = first.predict(*start, api_name="/study_start")
    assert screen[0].startswith("**Pair 1 of 3** for ann") and screen[2].startswith("**Prompt:** a &lt;s")
    with pytest.raises(AppError, match="Expected an answer to each of the four questions, but got none for Video"):
        first.predict("Video 1", "Video 1", "Video 2", None, api_name="/study_answer")  # the session keeps its pair
    answered = first.predict("Video 1", "Video 1", "Video 2", "Video 1", api_name="/study_answer")
    assert answered[0].startswith("**Pair 2 of 3**") and answered[2] != screen[2]
    resumed = Client(app.url, verbose=False).predict(*start, api_name="/study_start")  # a reload, another tab
    assert resumed[0].startswith("**Pair 2 of 3**") and resumed[2] == answered[2]  # the same next pair
    summary, table, _ = first.predict(str(results), api_name="/study_results")
    assert summary.startswith("1 answered pairs from 1 rater(s)")
    assert [row[:2] for row in table["data"]] == [["Text alignment", 1], ["Subject fidelity", 1],
                                                  ["Motion fidelity", 1], ["Video quality", 1]]


def test_the_command_serves_the_app_and_stops_cleanly_on_sigterm(tmp_path):
    """`vwarper ui` as a user runs it: the page is served, and SIGTERM (like Ctrl-C) stops it with exit 0."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "vwarper_hooks.apps.cli", "ui", "--model", "tiny", "--port", str(port),
           "--subjects", str(tmp_path / "subjects"), "--outputs", str(tmp_path / "outputs")]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()  # the first line is the address, once the page is served
        assert f"open http://127.0.0.1:{port}/" in line, process.stderr.read() if not line else line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = json.loads(response.read())
        assert config["title"] == "V-Warper"
        assert {"train", "generate", "study_start"} <= {d.get("api_name") for d in config["dependencies"]}
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "stopped" in out and (tmp_path / "subjects").is_dir()
