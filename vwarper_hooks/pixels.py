"""Pixel arrays as PIL images: the numpy arrays and torch tensors diffusers pipelines take as images.

Layouts follow diffusers: numpy arrays are channels-last, (H, W), (H, W, C) or a batch (N, H, W, C);
torch tensors are channels-first, (C, H, W) or a batch (N, C, H, W); C is 1 (grey), 3 (RGB) or 4
(RGBA). Values: floats in [0, 1] (diffusers' convention), uint8 as is, uint16 scaled by 1/257 and
other integers as 8-bit when they fit, else as 16-bit, else by their actual range (`wide_to_8bit`,
also used for PIL mode "I"). The images then go through `images.to_rgb` like any PIL image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import SubjectError

CHANNELS = (1, 3, 4)


def wide_to_8bit(values: np.ndarray) -> np.ndarray:
    """Integer grey values as uint8: 0..65535 scaled by 1/257 (65535 -> 255), anything wider (or negative)
    by its actual range, black at min(0, lowest value) and white at the highest (never clipped to white)."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 65535:
        scaled = values / 257.0
    else:
        low = min(0.0, low)
        scaled = (values - low) * (255.0 / max(high - low, 1.0))
    return np.clip(scaled.round(), 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.uint16:
        return np.clip((values / 257.0).round(), 0, 255).astype(np.uint8)
    if np.issubdtype(values.dtype, np.integer):
        fits = values.size == 0 or (values.min() >= 0 and values.max() <= 255)
        return values.astype(np.uint8) if fits else wide_to_8bit(values)
    if np.issubdtype(values.dtype, np.floating):
        finite = bool(np.isfinite(values).all())
        low, high = (float(values.min()), float(values.max())) if values.size and finite else (0.0, 1.0)
        if not finite or low < 0.0 or high > 1.0:
            got = "NaN or inf" if not finite else f"values in [{low:.3g}, {high:.3g}]"
            raise SubjectError(
                f"Expected float pixels in [0, 1] (as diffusers takes them) as {what}, but got {got}. Do rescale it, "
                "e.g. (x + 1) / 2 for [-1, 1], or pass uint8 pixels."
            )
        return (values * 255.0).round().astype(np.uint8)
    raise SubjectError(f"Expected uint8, uint16, integer or float pixels as {what}, but got dtype {values.dtype}. "
                       "Do convert it, e.g. with .astype(np.uint8).")


def _picture(values: np.ndarray, what: str) -> Image.Image:
    """One (H, W) or (H, W, C) array as a PIL image of mode L, RGB or RGBA."""
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    return Image.fromarray(np.ascontiguousarray(_to_uint8(values, what)))  # uint8: mode L, RGB or RGBA


def array_images(array: Any, what: str = "reference image") -> list[Image.Image]:
    """A numpy array or torch tensor (one image or a batch, module doc) as PIL images (not yet `to_rgb`)."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        tensor = tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor
        shape, layout = tuple(tensor.shape), "(C, H, W) or (N, C, H, W), C in 1, 3, 4"
        if tensor.ndim in (3, 4) and tensor.shape[-3] in CHANNELS:
            values = tensor.movedim(-3, -1).numpy()
        elif tensor.ndim == 2:
            values = tensor.numpy()
        else:
            values = None
    else:
        values, shape, layout = np.asarray(array), tuple(np.shape(array)), "(H, W, C) or (N, H, W, C), C in 1, 3, 4"
        ok = values.ndim == 2 or (values.ndim in (3, 4) and values.shape[-1] in CHANNELS)
        values = values if ok else None
    if values is None or 0 in shape:
        raise SubjectError(
            f"Expected an image array of shape {layout} (as diffusers takes them) as {what}, but got shape {shape}. "
            "Do reshape it, or pass PIL images."
        )
    batch = values if values.ndim == 4 else values[None]
    return [_picture(image, what if len(batch) == 1 else f"{what} [{i}]") for i, image in enumerate(batch)]
