"""The PNG panels of one generation (the demo and ``vwarper generate --panels`` write the same ones).

- ``reference.png``: the reference photos read, labelled by token and order; ``frames.png``: every
  generated frame, numbered; both captioned, like the others;
- ``masks.png``: fg / cycle / final masks per warp step (of the first subject);
- ``figure5.png`` (+ ``figure5_tiles.png``, the exact pixel tiles): the paper's figure 5;
- with several subjects, ``subjects.png``: each subject's final mask in its own colour, and which
  subject every token is injected from;
- with several reference photos, ``references.png``: which photo each injected token reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import VwarperError
from . import figures
from . import visualize as vis
from .generate import Generation


def _per_subject(diagnostics: dict[int, Any], tokens: list[str]) -> dict[str, dict[int, Any]]:
    """step -> diagnostics (one subject) or step -> {token: diagnostics}, as token -> step -> diagnostics."""
    if len(tokens) == 1:
        return {tokens[0]: diagnostics}
    return {token: {step: per[token] for step, per in diagnostics.items()} for token in tokens}


def write_panels(out: Path, generation: Generation) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write the panels into `out`; returns their paths and figure 5's layout."""
    video, diagnostics, photos = generation
    if not diagnostics:
        raise VwarperError("Expected diagnostics of the warp steps, but got none. Use at least 3 steps.")
    tokens = list(photos)
    series = _per_subject(diagnostics, tokens)
    first = series[tokens[0]]
    height, width = video.shape[1:3]
    read = {token: [vis.resize(im, height, width) for im in photos[token]] for token in tokens}
    pngs = {
        "reference": figures.save(figures.reference_figure(read), out / "reference.png"),
        "frames": figures.save(figures.frames_figure(video), out / "frames.png"),
        "masks": figures.save(figures.mask_figure(first), out / "masks.png"),
    }
    last = max(first)
    tiles, layout = vis.correspondence_figure(list(photos[tokens[0]]), video, first[last])
    pngs["figure5"] = figures.save(figures.figure5(tiles, layout), out / "figure5.png")
    pngs["figure5_tiles"] = vis.save_png(tiles, out / "figure5_tiles.png")
    layout["file"] = pngs["figure5_tiles"].name
    at_last = {token: series[token][last] for token in tokens}
    if len(tokens) > 1:
        pngs["subjects"] = figures.save(figures.subjects_figure(at_last), out / "subjects.png")
    if any(d.reference is not None for d in at_last.values()):
        pngs["references"] = figures.save(figures.references_figure(at_last), out / "references.png")
    return pngs, layout
