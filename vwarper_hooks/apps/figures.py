"""Labelled matplotlib figures of a run: the masks per warp step and the paper's figure 5.

`visualize` builds the pixel grids (exact tiles, for tests and further processing); this module
puts them in a figure a reader can follow: a title, axis labels naming rows and columns (frame and
photo numbers), and a legend saying what the colours mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .visualize import PAD, grid, label_tiles, mask_panel

MASK_LEGEND = (("white", "on (this token is warped / counted)"), ("black", "off"), ("grey", "separator"))
FIGURE5_ROWS = ("generated frame", "reference warped\nby the flow", "warp inside the\nfinal mask")
OVERLAY = (1.0, 0.2, 0.1, 0.35)  # RGBA of the final-mask overlay in figure 5
#: one colour per subject, and one per reference photo (tab10 / Dark2-like, told apart in print)
SUBJECT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
PHOTO_COLOURS = ((27, 158, 119), (217, 95, 2), (117, 112, 179), (231, 41, 138), (102, 166, 30), (230, 171, 2))
#: frames per row of frames.png (a long video wraps instead of making one very wide picture)
FRAMES_PER_ROW = 8
#: `_figure` scale at which a picture keeps its own pixels (100 dpi, 60 pixels per inch of scale 1)
NATIVE = 0.6
NUMBER_STYLE = dict(color="white", fontsize=8, ha="left", va="top",
                    bbox=dict(facecolor="black", alpha=0.6, pad=1.5, linewidth=0))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _centres(count: int, size: int, pad: int = PAD) -> list[float]:
    """Pixel centres of `count` tiles of `size` laid out by `visualize.grid`."""
    return [pad + i * (size + pad) + size / 2 for i in range(count)]


def _figure(picture: np.ndarray, scale: float = 1.0) -> tuple[Any, Any]:
    plt = _pyplot()
    height, width = picture.shape[:2]
    inches = (max(6.0, width / 60 * scale) + 2.5, max(3.5, height / 60 * scale) + 1.5)
    fig, ax = plt.subplots(figsize=inches, dpi=100)
    ax.imshow(picture, interpolation="nearest")
    return fig, ax


def frames_figure(video: np.ndarray, per_row: int = FRAMES_PER_ROW) -> Any:
    """Every generated frame at its own pixels, numbered as the video file plays them (0-based), in rows of
    `per_row`. Returns the Figure."""
    frames, height, width = video.shape[:3]
    rows = [list(video[start : start + per_row]) for start in range(0, frames, per_row)]
    fig, ax = _figure(grid(rows, background=255), scale=NATIVE)
    for i in range(frames):
        row, column = divmod(i, per_row)
        ax.text(PAD + column * (width + PAD) + 1, PAD + row * (height + PAD) + 1, str(i), **NUMBER_STYLE)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"frame number at each frame's top-left corner; {per_row} frames per row")
    ax.set_title(f"Generated video: {frames} frames of {width}x{height} px")
    fig.tight_layout()
    return fig


def reference_figure(photos: dict[str, list[np.ndarray]]) -> Any:
    """The reference photos each subject's reference branch read, resized and cropped to the generation size
    (what it encodes), labelled by subject token and reading order (0-based). Returns the Figure."""
    tiles = [photo for token in photos for photo in photos[token]]
    labels = [f"{token}\nphoto {i}" for token in photos for i in range(len(photos[token]))]
    height, width = tiles[0].shape[:2]
    fig, ax = _figure(grid([tiles], background=255), scale=NATIVE)
    ax.set_xticks(_centres(len(tiles), width), labels, fontsize=8)
    ax.set_yticks([])
    ax.set_xlabel("subject token and reference photo (in the order the reference branch read them)")
    ax.set_title(f"Reference photos read: {len(tiles)}, resized and cropped to the generation's {width}x{height} px")
    fig.tight_layout()
    return fig


def mask_figure(diagnostics: dict[int, Any], tile: int = 48) -> Any:
    """Rows: warp steps; columns: fg, cycle and final masks of every latent frame. Returns the Figure."""
    from matplotlib.patches import Patch

    picture, labels = mask_panel(diagnostics, tile=tile)
    steps = sorted(diagnostics)
    frames, h, w = diagnostics[steps[0]].grid
    size = (tile, max(1, round(tile * w / h)))
    fig, ax = _figure(picture)
    ax.set_xticks(_centres(len(labels), size[1]), [label.replace(" ", "\n") for label in labels], fontsize=8)
    ax.set_yticks(_centres(len(steps), size[0]), [f"step {s}" for s in steps], fontsize=8)
    ax.set_xlabel("mask and latent frame (fg: subject-token attention > tau_fg, cycle: eq. 5, final: eq. 6)")
    ax.set_ylabel("denoising step (0-based)")
    ax.set_title(f"V-Warper masks per warp step ({frames} latent frames of {h}x{w} tokens)")
    handles = [Patch(facecolor=c, edgecolor="black", label=t) for c, t in MASK_LEGEND]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="token is")
    fig.tight_layout()
    return fig


def figure5(picture: np.ndarray, layout: dict[str, Any]) -> Any:
    """Paper figure 5 from `visualize.correspondence_figure`'s picture and layout. Returns the Figure."""
    from matplotlib.patches import Patch

    height, width = layout["tile"]
    pad, frames = layout["pad"], layout["video_frames"]
    mask = np.asarray(layout["mask"], dtype=bool)  # (F, h, w) final mask on the token grid
    overlay = np.zeros((*picture.shape[:2], 4))
    ph, pw = height // mask.shape[1], width // mask.shape[2]
    top = pad + 2 * (height + pad)
    for f in range(mask.shape[0]):
        left = pad + f * (width + pad)
        cells = np.kron(mask[f], np.ones((ph, pw), dtype=bool))
        overlay[top : top + cells.shape[0], left : left + cells.shape[1]][cells] = OVERLAY
    fig, ax = _figure(picture, scale=1.5)
    ax.imshow(overlay, interpolation="nearest")
    ax.set_xticks(_centres(len(frames), width, pad), [f"latent {f}\n(frame {v})" for f, v in enumerate(frames)],
                  fontsize=8)
    ax.set_yticks(_centres(3, height, pad), FIGURE5_ROWS, fontsize=8)
    ax.set_xlabel("latent frame (the video frame shown for it)")
    ax.set_ylabel("row")
    ax.set_title(f"Paper fig. 5 at warp step {layout['step']}: reference values warped into the generation")
    handles = [Patch(facecolor=OVERLAY, edgecolor=OVERLAY[:3], label="final mask: reference values warped in")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def _rows_figure(rows: list[list[np.ndarray]], row_names: list[str], tile: tuple[int, int], title: str,
                 legend: list[tuple[tuple[int, int, int], str]], legend_title: str) -> Any:
    from matplotlib.patches import Patch

    fig, ax = _figure(grid(rows, background=255))
    frames = len(rows[0])
    ax.set_xticks(_centres(frames, tile[1]), [f"latent {f}" for f in range(frames)], fontsize=8)
    ax.set_yticks(_centres(len(rows), tile[0]), row_names, fontsize=8)
    ax.set_xlabel("latent frame")
    ax.set_title(title)
    handles = [Patch(facecolor=tuple(c / 255 for c in rgb), edgecolor="black", label=text) for rgb, text in legend]
    handles.append(Patch(facecolor=(0.5, 0.5, 0.5), edgecolor="black", label="not injected"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title=legend_title)
    fig.tight_layout()
    return fig


def subjects_figure(per_token: dict[str, Any], tile: int = 48) -> Any:
    """Several subjects at one warp step: one row per subject (its final mask in its own colour), and a
    last row with every token coloured by the subject it is injected from."""
    tokens = list(per_token)
    frames, h, w = per_token[tokens[0]].grid
    size = (tile, max(1, round(tile * w / h)))
    colours = [SUBJECT_COLOURS[i % len(SUBJECT_COLOURS)] for i in range(len(tokens))]
    owner = torch.full((frames, h, w), -1)
    rows = []
    for i, token in enumerate(tokens):
        mask = per_token[token].mask
        owner[mask] = i
        rows.append(label_tiles(torch.where(mask, i, -1), colours, size))
    rows.append(label_tiles(owner, colours, size))
    step = per_token[tokens[0]].step
    return _rows_figure(rows, [*tokens, "all subjects"], size,
                        f"Which subject each video token is injected from (warp step {step})",
                        list(zip(colours, tokens, strict=True)), "subject")


def references_figure(per_token: dict[str, Any], tile: int = 48) -> Any:
    """Several reference photos: for each subject, the photo each injected token reads."""
    tokens = [t for t, d in per_token.items() if d.reference is not None]
    frames, h, w = per_token[tokens[0]].grid
    size = (tile, max(1, round(tile * w / h)))
    photos = 1 + max(int(per_token[t].reference.max()) for t in tokens)
    colours = [PHOTO_COLOURS[i % len(PHOTO_COLOURS)] for i in range(photos)]
    rows = [label_tiles(torch.where(per_token[t].mask, per_token[t].reference.long(), -1), colours, size)
            for t in tokens]
    step = per_token[tokens[0]].step
    return _rows_figure(rows, tokens, size, f"Which reference photo each injected token reads (warp step {step})",
                        [(c, f"photo {i}") for i, c in enumerate(colours)], "reads")


def save(fig: Any, path: str | Path) -> Path:
    """Write `fig` as a PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")  # keeps the legend and row labels inside
    _pyplot().close(fig)
    return path
