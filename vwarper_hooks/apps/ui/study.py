"""The paper's paired preference study (appendix C.2, fig. A.2), without gradio: pairs, order, answers.

Two runs in the benchmark layout (``RUN/videos/<subject>/<name>.mp4|gif`` with ``<name>.json`` holding the
prompt, ``RUN/references/<subject>/*``) give one pair per video both runs hold. Each rater sees every pair
once, in an order and with sides (which run is "Video 1") drawn from a generator seeded by the study seed
and the rater's name: the same rater always gets the same sequence, so a rater can stop and resume, and
the side shown on the left is recorded with each answer. Answers go to a CSV or JSON file, rewritten
atomically (`files.atomic_file`) under a per-file lock, one row per answered pair.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ...errors import VwarperError
from ...files import atomic_file
from ..evaluation import IMAGE_SUFFIXES, VIDEO_SUFFIXES

logger = logging.getLogger(__name__)

#: the four questions of the paper's study: (column, short name, question shown to the rater)
QUESTIONS = (
    ("text_alignment", "Text alignment", "Which video follows the text prompt better?"),
    ("subject_fidelity", "Subject fidelity", "Which video keeps the subject of the reference photo better?"),
    ("motion_fidelity", "Motion fidelity", "Which video moves more naturally and as the prompt says?"),
    ("video_quality", "Video quality", "Which video has the better overall quality?"),
)
QUESTION_KEYS = tuple(key for key, _, _ in QUESTIONS)
FIELDS = ("rater", "position", "subject", "video", "prompt", "left", *QUESTION_KEYS, "run_a", "run_b", "answered_at")
SIDES = ("left", "right")

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class Pair:
    """One video of each run for the same subject, prompt and name."""

    subject: str
    name: str
    prompt: str
    video_a: Path
    video_b: Path
    reference: Path | None

    @property
    def key(self) -> tuple[str, str]:
        return self.subject, self.name


@dataclass(frozen=True)
class Trial:
    """A pair as one rater sees it: its place in the rater's sequence and the run shown on the left."""

    position: int
    pair: Pair
    left: str  # "A" or "B"

    def run_for(self, side: str) -> str:
        """The run ("A"/"B") shown on `side` ("left"/"right")."""
        if side not in SIDES:
            raise VwarperError(f"Expected a side 'left' or 'right', but got {side!r}. Pick Video 1 or Video 2.")
        return self.left if side == "left" else ("B" if self.left == "A" else "A")


def _videos(run: Path) -> dict[tuple[str, str], Path]:
    folder = run / "videos"
    if not folder.is_dir():
        raise VwarperError(f"Expected a benchmark run folder holding videos/<subject>/<name>.mp4 (the layout "
                           f"`vwarper eval` reads), but got {str(run)!r} without videos/. Pass the --out folder "
                           "of a benchmark run.")
    found = {}
    for subject in sorted(p for p in folder.iterdir() if p.is_dir()):
        for video in sorted(subject.iterdir()):
            if video.suffix.lower() in VIDEO_SUFFIXES and video.is_file():
                found.setdefault((subject.name, video.stem), video)
    return found


def _prompt(video: Path) -> str | None:
    try:
        return str(json.loads(video.with_suffix(".json").read_text())["prompt"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reference(run: Path, subject: str) -> Path | None:
    folder = run / "references" / subject
    photos = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    return photos[0] if photos else None


def load_pairs(run_a: str | Path, run_b: str | Path) -> tuple[list[Pair], list[str]]:
    """The pairs both runs hold (sorted by subject and name), and why other videos were left out."""
    run_a, run_b = Path(run_a).expanduser(), Path(run_b).expanduser()
    if run_a.resolve() == run_b.resolve():
        raise VwarperError(f"Expected two different runs to compare, but got {str(run_a)!r} twice. Pass another run B.")
    videos_a, videos_b = _videos(run_a), _videos(run_b)
    pairs, skipped = [], []
    for key in sorted(set(videos_a) | set(videos_b)):
        if key not in videos_a or key not in videos_b:
            skipped.append(f"{'/'.join(key)}: only in run {'A' if key in videos_a else 'B'}")
            continue
        prompt_a, prompt_b = _prompt(videos_a[key]), _prompt(videos_b[key])
        if prompt_a is None and prompt_b is None:
            skipped.append(f"{'/'.join(key)}: no prompt file ({key[1]}.json)")
            continue
        if None not in (prompt_a, prompt_b) and prompt_a != prompt_b:
            skipped.append(f"{'/'.join(key)}: the runs used different prompts")
            continue
        reference = _reference(run_a, key[0]) or _reference(run_b, key[0])
        pairs.append(Pair(key[0], key[1], prompt_a or prompt_b or "", videos_a[key], videos_b[key], reference))
    if not pairs:
        raise VwarperError(f"Expected videos that both runs hold (same subject and name), but got none in "
                           f"{str(run_a)!r} and {str(run_b)!r} ({len(skipped)} left out). Pass two runs of one "
                           "benchmark spec.")
    for reason in skipped:
        logger.info("study: left out %s", reason)
    return pairs, skipped


def check_rater(rater: str) -> str:
    """The rater's name, stripped; refused when empty, multi-line or longer than 64 characters."""
    name = (rater or "").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise VwarperError(f"Expected a rater name of 1-64 printable characters, but got {rater!r}. Type your "
                           "name or initials.")
    return name


def rater_order(pairs: list[Pair], rater: str, seed: int = 0) -> list[Trial]:
    """Every pair once, in an order and with left sides drawn for this rater (same rater and seed: same
    sequence; the paper's "video order and question order were fully randomized")."""
    digest = hashlib.sha256(f"{int(seed)}\0{check_rater(rater)}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    ordered = sorted(pairs, key=lambda p: p.key)
    rng.shuffle(ordered)
    return [Trial(i, pair, rng.choice("AB")) for i, pair in enumerate(ordered)]


def _lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path.resolve(), threading.Lock())


class AnswerFile:
    """The answers of a study: ``.csv`` (one row per answered pair, columns `FIELDS`) or ``.json``
    (``{"answers": [row, ...]}``). Every write rewrites the file atomically under a per-file lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if self.path.suffix.lower() not in (".csv", ".json"):
            raise VwarperError(f"Expected a results file ending in .csv or .json, but got {str(self.path)!r}. "
                               "Name it e.g. study.csv.")

    def read(self) -> list[dict[str, str]]:
        """Every recorded row (empty when the file does not exist yet)."""
        if not self.path.is_file():
            return []
        text = self.path.read_text(encoding="utf-8")
        try:
            rows = list(csv.DictReader(io.StringIO(text))) if self.path.suffix.lower() == ".csv" \
                else json.loads(text)["answers"]
        except (ValueError, KeyError, TypeError, csv.Error) as exc:
            raise VwarperError(f"Expected a study results file, but could not read {str(self.path)!r} ({exc}). "
                               "Choose another results file.") from None
        for row in rows:
            missing = [f for f in FIELDS if f not in row]
            if missing:
                raise VwarperError(f"Expected study results with the columns {', '.join(FIELDS)}, but "
                                   f"{str(self.path)!r} lacks {', '.join(missing)}. Choose another results file.")
        return [{f: str(row[f]) for f in FIELDS} for row in rows]

    def _write(self, rows: list[dict[str, str]]) -> None:
        with atomic_file(self.path) as tmp:
            if self.path.suffix.lower() == ".csv":
                with tmp.open("w", newline="", encoding="utf-8") as fh:
                    writer = csv.DictWriter(fh, fieldnames=FIELDS)
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                tmp.write_text(json.dumps({"questions": dict((k, q) for k, _, q in QUESTIONS), "answers": rows},
                                          indent=2), encoding="utf-8")

    def add(self, row: dict[str, str]) -> list[dict[str, str]]:
        """Append one answered pair (refused when this rater already answered it); returns every row."""
        with _lock(self.path):
            rows = self.read()
            if any((r["rater"], r["subject"], r["video"]) == (row["rater"], row["subject"], row["video"])
                   for r in rows):
                raise VwarperError(f"Expected a pair {row['rater']!r} has not answered yet, but "
                                   f"{row['subject']}/{row['video']} is already in {str(self.path)!r}. Reload the "
                                   "study to go on where you stopped.")
            rows.append({f: str(row[f]) for f in FIELDS})
            self._write(rows)
            return rows


def check_runs(rows: list[dict[str, str]], run_a: Path, run_b: Path, path: Path) -> None:
    """Refuse a results file that holds answers for other runs than these two."""
    other = {(r["run_a"], r["run_b"]) for r in rows} - {(str(run_a), str(run_b))}
    if other:
        a, b = sorted(other)[0]
        raise VwarperError(f"Expected answers for run A {str(run_a)!r} vs run B {str(run_b)!r} in {str(path)!r}, "
                           f"but it holds answers for {a!r} vs {b!r}. Choose another results file.")


def next_trial(order: list[Trial], rows: list[dict[str, str]], rater: str) -> Trial | None:
    """The rater's first trial without an answer (None: the rater is done)."""
    done = {(r["subject"], r["video"]) for r in rows if r["rater"] == rater}
    return next((t for t in order if t.pair.key not in done), None)


def answer_row(trial: Trial, rater: str, sides: dict[str, str], run_a: Path, run_b: Path) -> dict[str, str]:
    """The row recording `sides` (question -> "left" / "right") as the runs they mean."""
    missing = [name for key, name, _ in QUESTIONS if sides.get(key) not in SIDES]
    if missing:
        raise VwarperError(f"Expected an answer to each of the four questions, but got none for "
                           f"{', '.join(missing)}. Pick Video 1 or Video 2 for each.")
    return {
        "rater": rater, "position": str(trial.position + 1), "subject": trial.pair.subject, "video": trial.pair.name,
        "prompt": trial.pair.prompt, "left": trial.left, **{k: trial.run_for(sides[k]) for k in QUESTION_KEYS},
        "run_a": str(run_a), "run_b": str(run_b),
        "answered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
