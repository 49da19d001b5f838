"""Pictures of a V-Warper run: frame grids, mask panels, the paper's figure-5 warp, video files.

Everything here works on numpy arrays (uint8, ``(H, W, 3)`` images, ``(T, H, W, 3)`` videos) and
the `StepDiagnostics` of a session (flows and masks on the latent token grid). No rich, no plots:
callers decide where the PNGs go.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import MissingDependencyError
from ..images import resize_center_crop

logger = logging.getLogger(__name__)

PAD = 4
BACKGROUND = 255


def to_uint8(frames: Any) -> np.ndarray:
    """Frames as a uint8 array ``(T, H, W, 3)``: from float [0, 1] numpy/torch, uint8, or PIL images."""
    if isinstance(frames, Image.Image):
        frames = [frames]
    if isinstance(frames, list | tuple) and frames and isinstance(frames[0], Image.Image):
        return np.stack([np.asarray(f.convert("RGB")) for f in frames])
    array = frames.detach().cpu().float().numpy() if torch.is_tensor(frames) else np.asarray(frames)
    if array.ndim == 5:  # (batch, T, ...): the first video
        array = array[0]
    if array.ndim == 3:
        array = array[None]
    if array.shape[-1] != 3 and array.shape[1] == 3:  # (T, 3, H, W)
        array = array.transpose(0, 2, 3, 1)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def grid(tiles: Sequence[Sequence[np.ndarray]], pad: int = PAD, background: int = BACKGROUND) -> np.ndarray:
    """Rows of equally sized ``(H, W, 3)`` tiles with `pad` pixels of `background` between and around them."""
    rows, cols = len(tiles), max(len(r) for r in tiles)
    height, width = tiles[0][0].shape[:2]
    out = np.full((pad + rows * (height + pad), pad + cols * (width + pad), 3), background, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = pad + r * (height + pad), pad + c * (width + pad)
            out[y : y + height, x : x + width] = tile
    return out


def tile_at(image: np.ndarray, row: int, col: int, size: tuple[int, int], pad: int = PAD) -> np.ndarray:
    """The tile at (row, col) of a picture made by `grid` (tiles of `size` = (H, W))."""
    height, width = size
    y, x = pad + row * (height + pad), pad + col * (width + pad)
    return image[y : y + height, x : x + width]


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def resize(image: np.ndarray | Image.Image, height: int, width: int) -> np.ndarray:
    """Resize and centre-crop to (height, width), like the reference branch does."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return np.asarray(resize_center_crop(pil.convert("RGB"), height, width))


def mask_image(mask: torch.Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    """A (h, w) boolean/float token mask as a grey-scale RGB picture of (height, width), nearest upsampling."""
    values = mask.float().numpy() if torch.is_tensor(mask) else np.asarray(mask, dtype=np.float32)
    grey = (np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    pil = Image.fromarray(grey).resize((width, height), Image.NEAREST)
    return np.repeat(np.asarray(pil)[..., None], 3, axis=-1)


def frame_for_latent(latent_frame: int, latent_frames: int, video_frames: int) -> int:
    """The video frame shown for a latent (token) frame: spread evenly, first to first, last to last."""
    if latent_frames <= 1:
        return 0
    return round(latent_frame * (video_frames - 1) / (latent_frames - 1))


def mask_panel(diagnostics: dict[int, Any], tile: int = 48) -> tuple[np.ndarray, list[str]]:
    """Rows = warp steps; columns = fg, cycle and final masks of every latent frame.

    :return: the picture and the column labels (``"fg f0"``, ...), left to right.
    """
    if not diagnostics:
        raise ValueError("Expected diagnostics of at least one warp step, but got none.")
    rows, labels = [], []
    for step in sorted(diagnostics):
        diag = diagnostics[step]
        frames, h, w = diag.grid
        size = (tile, max(1, round(tile * w / h)))
        row = []
        for name, mask in (("fg", diag.fg_mask), ("cycle", diag.cc_mask), ("final", diag.mask)):
            for f in range(frames):
                if mask is None:  # masks switched off: an all-white (everything warped) tile
                    mask_f = torch.ones(h, w)
                else:
                    mask_f = mask[f]
                row.append(mask_image(mask_f, *size))
                if len(rows) == 0:
                    labels.append(f"{name} f{f}")
        rows.append(row)
    return grid(rows, background=128), labels


def warp_reference(
    reference: np.ndarray | Sequence[np.ndarray], flow: torch.Tensor, size: tuple[int, int]
) -> np.ndarray:
    """Reference pixels warped into each generation frame by a token flow (paper figure 5).

    :param reference: ``(H, W, 3)`` reference image at the generation size `size` = (H, W), or one
        per reference photo when the flow reads several (their tokens side by side, F*h*w each).
    :param flow: ``(F, h, w)`` global reference-token index read by each generation token.
    :return: ``(F, H, W, 3)``: tile (i, j) of frame f is the reference patch of token ``flow[f, i, j]``.
    """
    photos = [reference] if isinstance(reference, np.ndarray) else list(reference)
    frames, h, w = flow.shape
    height, width = size
    if any(p.shape[:2] != (height, width) for p in photos):
        raise ValueError(f"Expected references of {height}x{width}, but got {[p.shape[:2] for p in photos]}.")
    ph, pw = height // h, width // w
    flat = flow.reshape(frames, h * w).long()
    which = (flat // (frames * h * w)).clamp(max=len(photos) - 1).numpy()
    local = flat % (h * w)
    rows, cols = (local // w).numpy(), (local % w).numpy()
    out = np.empty((frames, h * ph, w * pw, 3), np.uint8)
    for f in range(frames):
        for k in range(h * w):
            i, j = divmod(k, w)
            src = photos[which[f, k]][rows[f, k] * ph : (rows[f, k] + 1) * ph, cols[f, k] * pw : (cols[f, k] + 1) * pw]
            out[f, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] = src
    if (h * ph, w * pw) != (height, width):  # sizes not divisible by the grid: stretch to fit
        out = np.stack([np.asarray(Image.fromarray(o).resize((width, height), Image.NEAREST)) for o in out])
    return out


def label_tiles(labels: torch.Tensor, colours: Sequence[tuple[int, int, int]], size: tuple[int, int]) -> list:
    """One ``(H, W, 3)`` tile per latent frame: token (i, j) painted ``colours[labels[f, i, j]]``
    (label -1: grey, nothing). `labels` is ``(F, h, w)`` int."""
    palette = np.array([*colours, (128, 128, 128)], dtype=np.uint8)  # index -1 -> the last entry: grey
    tiles = []
    for frame in labels.long().numpy():
        painted = palette[frame]  # (h, w, 3)
        tiles.append(np.asarray(Image.fromarray(painted).resize((size[1], size[0]), Image.NEAREST)))
    return tiles


def masked_warp(frames: np.ndarray, warped: np.ndarray, mask: torch.Tensor) -> np.ndarray:
    """Warped pixels where the token mask ``(F, h, w)`` is on, the generated frame elsewhere."""
    height, width = frames.shape[1:3]
    out = frames.copy()
    for f in range(len(frames)):
        on = mask_image(mask[f], height, width)[..., 0] > 127
        out[f][on] = warped[f][on]
    return out


def correspondence_figure(
    reference: np.ndarray | Image.Image | list, video: np.ndarray, diag: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Paper figure 5 for one warp step: rows = generated frames, warped reference, masked warp.

    Columns are the latent frames (each shown with its video frame). Returns the picture and its
    layout: ``tile`` (H, W), ``pad``, ``rows`` names, ``video_frames`` shown, and per-frame ``mask``.
    """
    frames_t, h, w = diag.grid
    height, width = video.shape[1:3]
    ref = [resize(r, height, width) for r in reference] if isinstance(reference, list) else resize(
        reference, height, width)
    picks = [frame_for_latent(f, frames_t, len(video)) for f in range(frames_t)]
    shown = video[picks]
    warped = warp_reference(ref, diag.flow, (height, width))
    masked = masked_warp(shown, warped, diag.mask)
    picture = grid([list(shown), list(warped), list(masked)])
    layout = {
        "step": diag.step,
        "tile": [height, width],
        "pad": PAD,
        "rows": ["generated", "warped_reference", "masked_warp"],
        "video_frames": picks,
        "mask": diag.mask.to(torch.uint8).tolist(),
    }
    return picture, layout


def label(picture: np.ndarray, text: str, line_height: int = 12) -> np.ndarray:
    """The picture with a caption strip above it (one line per ``\\n`` in `text`)."""
    strip = Image.new("RGB", (picture.shape[1], line_height * (text.count("\n") + 1) + 2), (BACKGROUND,) * 3)
    ImageDraw.Draw(strip).multiline_text((PAD, 1), text, fill=(0, 0, 0), spacing=2)
    return np.concatenate([np.asarray(strip), picture], axis=0)


def write_video(frames: np.ndarray, stem: str | Path, fps: int = 8) -> Path:
    """Write ``(T, H, W, 3)`` uint8 frames as ``stem.mp4`` (imageio-ffmpeg present) or else ``stem.gif``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401

        path = stem.with_name(stem.name + ".mp4")
        # macro_block_size=1: tiny sizes (not multiples of 16) are written as they are.
        imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)
        return path
    except ImportError:
        logger.info("imageio-ffmpeg is not installed: writing a GIF instead of an mp4")
    path = stem.with_name(stem.name + ".gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Decode a video (.gif with PIL; .mp4 and others with imageio) as ``(T, H, W, 3)`` uint8."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as gif:
            frames = []
            for i in range(getattr(gif, "n_frames", 1)):
                gif.seek(i)
                frames.append(np.asarray(gif.convert("RGB")))
        return np.stack(frames)
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401 - the mp4 / webm reader
    except ImportError:
        raise MissingDependencyError(
            f"Expected imageio and imageio-ffmpeg to read {path.name}, but they are not installed. "
            "Run pip install imageio imageio-ffmpeg (or vwarper-hooks[video]), or use .gif videos."
        ) from None
    return np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(path, memtest=False)])
