"""The browser app in a real browser: headless Debian chromium driven by selenium through the system
chromedriver (nothing is downloaded). On the learned model (the app's default) and the tiny one: train a
subject from uploaded files, generate, see both videos and the panels; on the learned model also: a bad
token's message, cancel a run, and three comparisons of the study with their results file.

Screenshots of each tab go to ``$VWARPER_SCREENSHOTS`` (default: a temporary folder): ui_start.png, ui_subjects.png,
ui_generate.png, ui_progress.png, ui_cancelled.png, ui_compare.png, ui_results.png. Without chromium / chromedriver the
module is skipped, unless ``VWARPER_REQUIRE_BROWSER=1`` (CI's first stage), where that is a failure.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("VWARPER_REQUIRE_BROWSER") == "1"
MISSING = [f"{name} (apt-get install {apt})" for name, path, apt in (
    ("chromium", CHROMIUM, "chromium"), ("chromedriver", CHROMEDRIVER, "chromium-driver")) if path is None]
MISSING += [f"{module} (pip install {pip})" for module, pip in (("gradio", '"vwarper-hooks[ui]"'),
                                                                  ("selenium", "selenium"))
            if importlib.util.find_spec(module) is None]
if MISSING:
    reason = f"the browser tests need {', '.join(MISSING)}"
    if REQUIRED:
        pytest.fail(f"VWARPER_REQUIRE_BROWSER=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from ui_support import clock_photos, make_runs, pipe_state, served, world_photos  # noqa: E402

from vwarper_hooks.apps.ui.jobs import Cancelled  # noqa: E402

MODELS = {"learned": ("<ui-shape>", "orange striped circle"), "tiny": ("<ui-clock>", "clock")}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("VWARPER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _serve(model: str, tmp_path_factory):
    with served(model, tmp_path_factory.mktemp(f"ui-browser-{model}")) as s:
        s.model = model
        yield s


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The app on the learned model (its default), for every test of the module."""
    yield from _serve("learned", tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    yield from _serve("tiny", tmp_path_factory)


class Page:
    """The page in the browser, by the elem_ids of the app."""

    def __init__(self, driver, url: str) -> None:
        self.driver = driver
        driver.get(url)
        self.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#photos input[type=file]"))

    def wait_for(self, condition, timeout: float = 90.0):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: condition())
        except Exception:
            self.driver.save_screenshot(str(Path(os.environ.get("VWARPER_SCREENSHOTS", "/tmp")) / "ui_failure.png"))
            raise

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, elem_id: str) -> str:
        return " ".join(self.find(f"#{elem_id}").text.split())

    def tab(self, name: str) -> None:
        self.find(f"#tab-{name}-button").click()

    def type(self, elem_id: str, value: object) -> None:
        field = self.find(f"#{elem_id} input, #{elem_id} textarea")
        field.clear()
        field.send_keys(str(value))

    def shot(self, folder: Path, name: str) -> Path:
        """The whole page as a user scrolls through it (the window grows to the page's height meanwhile)."""
        path = folder / name
        size = self.driver.get_window_size()
        height = self.driver.execute_script("window.scrollTo(0, 0); return document.documentElement.scrollHeight")
        self.driver.set_window_size(size["width"], min(max(height, size["height"]), 4000))
        time.sleep(0.3)
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(size["width"], size["height"])
        return path


def train(page: Page, app, photos: list[Path]) -> str:
    token, class_word = MODELS[app.model]
    page.find("#photos input[type=file]").send_keys("\n".join(str(p) for p in photos))
    page.wait_for(lambda: len(page.driver.find_elements(By.CSS_SELECTOR, "#photo-preview img")) == len(photos))
    page.type("token", token)
    page.type("class-word", class_word)
    page.find("#train").click()
    page.wait_for(lambda: page.text("train-status").startswith("Saved"))
    return token


@pytest.mark.parametrize("model", list(MODELS))
def test_train_from_uploaded_photos_then_generate_and_see_both_videos_and_the_panels(browser, model, shots, tmp_path,
                                                                                     request):
    app = request.getfixturevalue(model)
    page = Page(browser, app.url)
    if app.model == "learned":
        page.shot(shots, "ui_start.png")  # what a first-time user sees
    before = pipe_state(app.pipe)
    photos = world_photos(tmp_path) if app.model == "learned" else clock_photos()
    token = train(page, app, photos)
    assert token in page.text("train-status") and token in page.text("subjects-table")
    assert (app.ctx.library.root / token.strip("<>") / "subject.json").is_file()
    if app.model == "learned":
        page.shot(shots, "ui_subjects.png")
    page.tab("generate")
    page.find("#gen-subjects input").click()
    page.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#gen-subjects li[role=option]"))[0].click()
    page.wait_for(lambda: token in page.find("#prompt textarea").get_attribute("value"))  # an example prompt
    page.find("#generate").click()
    page.wait_for(lambda: page.text("generate-status").startswith("Done"), timeout=180)
    for elem_id in ("video-coarse", "video-vwarper"):
        video = page.find(f"#{elem_id} video")
        assert video.get_attribute("src")
        page.wait_for(lambda video=video: browser.execute_script("return arguments[0].readyState", video) >= 1)
    panels = browser.find_elements(By.CSS_SELECTOR, "#panels img")
    assert len(panels) >= 2
    page.wait_for(lambda: all(browser.execute_script("return arguments[0].naturalWidth", p) > 0 for p in panels))
    links = [a.get_attribute("href") or "" for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
    assert any(link.endswith("vwarper.mp4") for link in links) and any(link.endswith("masks.png") for link in links)
    assert pipe_state(app.pipe) == before
    if app.model == "learned":
        page.shot(shots, "ui_generate.png")


def test_a_bad_token_shows_the_librarys_message_in_the_page(browser, learned):
    page = Page(browser, learned.url)
    page.find("#photos input[type=file]").send_keys(str(world_photos(learned.root / "bad-token")[0]))
    page.type("token", "circle")  # a word the model knows
    page.find("#train").click()
    page.wait_for(lambda: page.text("train-status").startswith("Error"))
    assert "Expected a subject token the tokenizer does not know yet, but got 'circle'" in page.text("train-status")
    assert "circle" not in [e.name for e in learned.ctx.library.entries()]


def test_cancel_a_generation_from_the_page_or_by_closing_it(browser, learned, shots):
    page = Page(browser, learned.url)
    if not learned.ctx.library.entries():
        train(page, learned, world_photos(learned.root / "cancel"))
    before, outputs = pipe_state(learned.pipe), learned.outputs()
    page.tab("generate")
    page.find("#gen-subjects input").click()
    page.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#gen-subjects li[role=option]"))[0].click()
    page.type("steps", 900)
    page.find("#generate").click()
    page.wait_for(lambda: (job := learned.ctx.runner.running()) is not None and job.progress.done >= 3)
    page.wait_for(lambda: "step" in page.text("generate-status"))  # the status says where the run is
    page.shot(shots, "ui_progress.png")
    page.find("#generate-cancel").click()
    page.wait_for(lambda: page.text("generate-status").startswith("Cancelled"))
    job = learned.ctx.runner.history[-1]
    assert job.kind == "generation" and isinstance(job.error, Cancelled) and job.progress.done < job.progress.total
    assert learned.outputs() == outputs  # nothing written, no temporary left
    assert pipe_state(learned.pipe) == before
    page.shot(shots, "ui_cancelled.png")
    page.find("#generate").click()  # again, then close the tab: its job ends too
    page.wait_for(lambda: (job := learned.ctx.runner.running()) is not None and job.progress.done >= 3)
    job = learned.ctx.runner.running()
    browser.get("about:blank")
    assert job.wait(30) and isinstance(job.error, Cancelled)
    assert learned.outputs() == outputs and pipe_state(learned.pipe) == before


def test_three_comparisons_are_recorded_and_the_results_shown(browser, learned, shots, tmp_path):
    run_a, run_b = make_runs(tmp_path, pairs=3)
    results = learned.ctx.outputs / "answers.csv"
    page = Page(browser, learned.url)
    page.tab("compare")
    page.type("run-a", run_a)
    page.type("run-b", run_b)
    page.type("rater", "rater-1")
    page.type("results-file", results.name)  # the app writes only inside its outputs folder
    page.find("#study-start").click()
    picks = ["Video 1", "Video 2", "Video 1", "Video 1"]  # text, subject, motion, quality
    for n in range(1, 4):
        page.wait_for(lambda n=n: page.text("study-status").startswith(f"Pair {n} of 3"))
        page.wait_for(lambda: page.find("#study-video-1 video").get_attribute("src"))
        assert page.find("#study-reference img").get_attribute("src")
        assert "toy number" in page.text("study-prompt")
        for key, pick in zip(("text_alignment", "subject_fidelity", "motion_fidelity", "video_quality"), picks,
                             strict=True):
            label = next(e for e in browser.find_elements(By.CSS_SELECTOR, f"#q-{key} label") if e.text == pick)
            label.click()
        if n == 1:
            page.shot(shots, "ui_compare.png")
        page.find("#study-submit").click()
    page.wait_for(lambda: page.text("study-status").startswith("Done"))
    with results.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rater"] for r in rows] == ["rater-1"] * 3
    assert sorted(r["video"] for r in rows) == ["00", "01", "02"]
    for row in rows:  # "Video 1" is the left video: the run recorded as shown on the left
        other = "B" if row["left"] == "A" else "A"
        assert (row["text_alignment"], row["subject_fidelity"]) == (row["left"], other)
    page.wait_for(lambda: "3 answered pairs from 1 rater" in page.text("study-summary"))
    assert "Text alignment" in page.text("study-table")
    page.wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#study-plot img"))
    page.shot(shots, "ui_results.png")
