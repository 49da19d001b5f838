"""Labelled matplotlib figures of a run: the masks per warp step and the paper's figure 5.

`visualize` builds the pixel grids (exact tiles, for tests and further processing); this module
puts them in a figure a reader can follow: a title, axis labels naming rows and columns, and a
legend saying what the colours mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .visualize import PAD, mask_panel

MASK_LEGEND = (("white", "on (this token is warped / counted)"), ("black", "off"), ("grey", "separator"))
FIGURE5_ROWS = ("generated frame", "reference warped\nby the flow", "warp inside the\nfinal mask")
OVERLAY = (1.0, 0.2, 0.1, 0.35)  # RGBA of the final-mask overlay in figure 5


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


def save(fig: Any, path: str | Path) -> Path:
    """Write `fig` as a PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")  # keeps the legend and row labels inside
    _pyplot().close(fig)
    return path
