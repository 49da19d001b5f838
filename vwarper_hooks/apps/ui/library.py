"""The subjects folder of the app: saved subject directories, listed, described and deleted.

Each subject is a directory written by `Subject.save` (``subject.json`` and its files), named after its
token (``<my-dog>`` -> ``my-dog``). Only direct children holding a ``subject.json`` are listed, and only
those can be deleted. Reading a listing opens each manifest as JSON; the full check of hashes and
weights happens when a job loads the subject (`Subject.load`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SubjectError
from ...files import remove_stale_temporaries

logger = logging.getLogger(__name__)

MANIFEST = "subject.json"



@dataclass(frozen=True)
class SavedSubject:
    """What the page shows of one saved subject."""

    name: str
    path: Path
    token: str
    class_word: str
    base_model: str | None = None
    steps: int = 0
    final_loss: float | None = None
    photos: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.token} ({self.class_word})"


def folder_name(token: str) -> str:
    """The directory name of a subject token: ``<my-dog>`` -> ``my-dog`` (letters, digits, - and _)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", (token or "").strip()).strip("-_")
    if not name:
        raise SubjectError(f"Expected a subject token with letters or digits, such as '<my-dog>', but got {token!r}. "
                           "Type a token like <my-dog>.")
    return name


class SubjectLibrary:
    """The saved subjects under `root` (created on first use)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def path_for(self, token: str) -> Path:
        return self.root / folder_name(token)

    def _read(self, folder: Path) -> SavedSubject | None:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            losses = manifest.get("losses") or []
            return SavedSubject(
                name=folder.name, path=folder, token=str(manifest["token"]), class_word=str(manifest["class_word"]),
                base_model=manifest.get("base_model"), steps=len(losses),
                final_loss=float(losses[-1]) if losses else None,
                photos=[folder / rel for rel in manifest.get("images", [])],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("skipping %s: not a readable subject directory (%s)", folder, exc)
            return None

    def entries(self) -> list[SavedSubject]:
        """Every saved subject, by name."""
        if not self.root.is_dir():
            return []
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [s for s in (self._read(f) for f in folders if (f / MANIFEST).is_file()) if s is not None]

    def get(self, name: str) -> SavedSubject:
        """The saved subject called `name`; `SubjectError` naming the saved ones when there is none."""
        folder = self.root / str(name or "")
        entry = self._read(folder) if name and folder.parent == self.root and (folder / MANIFEST).is_file() else None
        if entry is None:
            names = ", ".join(e.name for e in self.entries()) or "none yet"
            raise SubjectError(f"Expected a saved subject, but got {name!r}, which is not in {str(self.root)!r} "
                               f"(saved: {names}). Pick one from the list or train one first.")
        return entry

    def delete(self, name: str) -> Path:
        """Remove the saved subject `name` (and what a killed save of it left)."""
        entry = self.get(name)
        shutil.rmtree(entry.path)
        remove_stale_temporaries(entry.path)
        logger.info("deleted subject %s", entry.path)
        return entry.path
