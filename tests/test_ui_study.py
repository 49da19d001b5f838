"""The A/B study of the browser app without a browser (and without gradio): pairing two runs, the order and
sides drawn per rater, resuming, the answers file (atomic, locked, CSV and JSON) and Wilson intervals."""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from ui_support import make_runs

from vwarper_hooks.apps.ui import stats, study
from vwarper_hooks.errors import VwarperError


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Read-only here: a test that changes a run makes its own."""
    return make_runs(tmp_path_factory.mktemp("runs"), pairs=3)


def _pairs(count: int) -> list[study.Pair]:
    return [study.Pair(f"s{i % 3}", f"{i:02d}", f"prompt {i}", Path(f"a/{i}.mp4"), Path(f"b/{i}.mp4"), None)
            for i in range(count)]


def test_pairs_are_the_videos_both_runs_hold_with_prompt_and_reference(runs):
    run_a, run_b = runs
    pairs, skipped = study.load_pairs(run_a, run_b)
    assert [p.key for p in pairs] == [("subject0", "00"), ("subject0", "02"), ("subject1", "01")]
    assert skipped == ["subject1/03: only in run A"]
    first = pairs[0]
    assert first.prompt == "a <s0> toy number 0 on the beach"
    # mp4 where imageio can write it, else GIF (the declared floors): the pair holds whichever the run has
    assert first.video_a.with_suffix("") == run_a / "videos/subject0/00" and first.video_a.suffix in (".mp4", ".gif")
    assert first.video_b.with_suffix("") == run_b / "videos/subject0/00" and first.video_b.suffix in (".mp4", ".gif")
    assert first.reference == run_a / "references/subject0/00.png"


def test_pairs_with_different_prompts_are_left_out_and_bad_runs_are_refused(tmp_path):
    run_a, run_b = make_runs(tmp_path, pairs=3)
    (run_b / "videos/subject0/02.json").write_text(json.dumps({"prompt": "another prompt"}))
    pairs, skipped = study.load_pairs(run_a, run_b)
    assert ("subject0", "02") not in [p.key for p in pairs]
    assert "subject0/02: the runs used different prompts" in skipped
    with pytest.raises(VwarperError, match="without videos/"):
        study.load_pairs(run_a, tmp_path / "nowhere")
    with pytest.raises(VwarperError, match="two different runs"):
        study.load_pairs(run_a, run_a)
    empty = tmp_path / "empty"
    (empty / "videos").mkdir(parents=True)
    with pytest.raises(VwarperError, match="both runs hold"):
        study.load_pairs(run_a, empty)


def test_each_rater_sees_every_pair_once_in_an_order_seeded_by_name_and_study_seed():
    pairs = _pairs(8)
    alice = study.rater_order(pairs, "alice", seed=0)
    assert sorted(t.pair.key for t in alice) == sorted(p.key for p in pairs)
    assert [t.position for t in alice] == list(range(8))
    again = study.rater_order(list(reversed(pairs)), " alice ", seed=0)  # input order and spaces do not matter
    assert [(t.pair.key, t.left) for t in again] == [(t.pair.key, t.left) for t in alice]
    others = [study.rater_order(pairs, name, seed) for name, seed in (("bob", 0), ("alice", 1))]
    for other in others:
        assert [(t.pair.key, t.left) for t in other] != [(t.pair.key, t.left) for t in alice]


def test_sides_are_balanced_over_raters_and_each_order_is_a_fair_shuffle():
    pairs = _pairs(6)
    orders = [study.rater_order(pairs, f"rater{i}") for i in range(400)]
    lefts = Counter(t.left for order in orders for t in order)
    assert 0.45 < lefts["A"] / 2400 < 0.55
    firsts = Counter(order[0].pair.key for order in orders)
    assert len(firsts) == 6 and min(firsts.values()) > 400 / 6 * 0.6  # every pair comes first now and then


def test_a_side_maps_to_the_run_shown_there():
    trial = study.Trial(0, _pairs(1)[0], left="B")
    assert (trial.run_for("left"), trial.run_for("right")) == ("B", "A")
    with pytest.raises(VwarperError, match="Video 1 or Video 2"):
        trial.run_for("middle")


def test_rater_names_are_checked():
    assert study.check_rater("  ann ") == "ann"
    for bad in ("", "   ", "a" * 65, "two\nlines"):
        with pytest.raises(VwarperError, match="rater name"):
            study.check_rater(bad)


def _answer(trial: study.Trial, rater: str, run_a: Path, run_b: Path, side: str = "left") -> dict[str, str]:
    return study.answer_row(trial, rater, dict.fromkeys(study.QUESTION_KEYS, side), run_a, run_b)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_answers_are_recorded_per_rater_and_a_rater_resumes_where_they_stopped(tmp_path, runs, suffix):
    run_a, run_b = runs
    pairs, _ = study.load_pairs(run_a, run_b)
    answers = study.AnswerFile(tmp_path / f"answers{suffix}")
    order = study.rater_order(pairs, "ann")
    for trial in order[:2]:
        answers.add(_answer(trial, "ann", run_a, run_b))
    rows = study.AnswerFile(answers.path).read()  # a new session (a reload, another process)
    assert [(r["subject"], r["video"]) for r in rows] == [t.pair.key for t in order[:2]]
    assert [r["left"] for r in rows] == [t.left for t in order[:2]]
    assert [r["subject_fidelity"] for r in rows] == [t.left for t in order[:2]]  # "left" chosen: the run there
    assert [r["position"] for r in rows] == ["1", "2"]
    resumed = study.next_trial(study.rater_order(pairs, "ann"), rows, "ann")
    assert resumed == order[2]
    assert study.next_trial(study.rater_order(pairs, "bob"), rows, "bob").position == 0  # bob starts anew
    with pytest.raises(VwarperError, match="already in"):
        answers.add(_answer(order[0], "ann", run_a, run_b))
    answers.add(_answer(order[2], "ann", run_a, run_b))
    assert study.next_trial(order, answers.read(), "ann") is None
    if suffix == ".csv":
        with answers.path.open(newline="") as fh:
            assert next(csv.reader(fh)) == list(study.FIELDS)


def test_answers_missing_a_question_are_refused_with_the_names(runs):
    run_a, run_b = runs
    trial = study.rater_order(study.load_pairs(*runs)[0], "ann")[0]
    sides = {"text_alignment": "left", "subject_fidelity": "right"}
    with pytest.raises(VwarperError, match="Motion fidelity, Video quality"):
        study.answer_row(trial, "ann", sides, run_a, run_b)


def test_a_results_file_of_other_runs_or_another_format_is_refused(tmp_path, runs):
    run_a, run_b = runs
    rows = [dict.fromkeys(study.FIELDS, "x") | {"run_a": "/else/a", "run_b": "/else/b"}]
    with pytest.raises(VwarperError, match="Choose another results file"):
        study.check_runs(rows, run_a, run_b, tmp_path / "a.csv")
    with pytest.raises(VwarperError, match=r"\.csv or \.json"):
        study.AnswerFile(tmp_path / "answers.txt")
    (tmp_path / "other.csv").write_text("name,score\nx,1\n")
    with pytest.raises(VwarperError, match="lacks rater"):
        study.AnswerFile(tmp_path / "other.csv").read()


def test_a_failed_write_keeps_the_previous_answers_and_leaves_no_temporary(tmp_path, runs, monkeypatch):
    run_a, run_b = runs
    order = study.rater_order(study.load_pairs(*runs)[0], "ann")
    answers = study.AnswerFile(tmp_path / "answers.csv")
    answers.add(_answer(order[0], "ann", run_a, run_b))
    before = answers.path.read_bytes()

    def disk_full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError):
        answers.add(_answer(order[1], "ann", run_a, run_b))
    assert answers.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["answers.csv"]


def test_raters_answering_at_once_lose_no_answer(tmp_path, runs):
    run_a, run_b = runs
    pairs, _ = study.load_pairs(*runs)
    answers = study.AnswerFile(tmp_path / "answers.json")
    raters = [f"r{i}" for i in range(6)]

    def rate(name: str) -> None:
        for trial in study.rater_order(pairs, name):
            answers.add(_answer(trial, name, run_a, run_b, side="right"))

    threads = [threading.Thread(target=rate, args=(name,)) for name in raters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = answers.read()
    assert len(rows) == len(raters) * len(pairs)
    assert Counter(r["rater"] for r in rows) == dict.fromkeys(raters, len(pairs))


def test_wilson_interval_matches_known_values():
    assert stats.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert stats.wilson(1, 10) == pytest.approx((0.0179, 0.4042), abs=1e-4)
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert stats.wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    low, high = stats.wilson(3, 7)
    assert (1 - high, 1 - low) == pytest.approx(stats.wilson(4, 7))  # symmetric in the two runs
    with pytest.raises(ValueError):
        stats.wilson(5, 4)


def test_preferences_count_run_a_per_question_with_intervals():
    rows = [dict.fromkeys(study.QUESTION_KEYS, "A") for _ in range(8)]
    rows += [dict.fromkeys(study.QUESTION_KEYS, "B") for _ in range(2)]
    rows[0]["motion_fidelity"] = "B"
    prefs = {p.key: p for p in stats.preferences(rows)}
    assert [p.key for p in stats.preferences(rows)] == list(study.QUESTION_KEYS)
    assert (prefs["text_alignment"].n, prefs["text_alignment"].wins_a) == (10, 8)
    assert prefs["text_alignment"].rate_a == 0.8
    assert (prefs["text_alignment"].low, prefs["text_alignment"].high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert prefs["motion_fidelity"].wins_a == 7
    assert stats.table(stats.preferences(rows))[0] == ["Text alignment", 10, "80.0", "49.0 - 94.3"]
    fig = stats.results_figure(stats.preferences(rows), "vwarper", "baseline", raters=2)
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 2) for b in bars] == [0.8, 0.8, 0.7, 0.8][::-1]  # drawn bottom-up
