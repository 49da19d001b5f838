"""Reference photos as the models see them: checked, resized and centre-cropped, repeated over time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import SubjectError

ImageInput = Image.Image | str | Path

logger = logging.getLogger(__name__)

def check_image(image: Image.Image, what: str = "reference image") -> Image.Image:
    """Refuse non-RGB inputs with a clear error (RGBA / palette / grey are not guessed at)."""
    if not isinstance(image, Image.Image):
        raise SubjectError(f"Expected a PIL.Image.Image as {what}, but got {type(image).__name__}. Open it with PIL.")
    if image.mode != "RGB":
        raise SubjectError(
            f"Expected an RGB {what}, but got mode {image.mode!r}. Convert it with image.convert('RGB')."
        )
    return image


def resize_center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale to cover (height, width), then crop the centre; logs when the size changes."""
    check_image(image)
    if image.size == (width, height):
        return image
    logger.info("reference image %sx%s resized and cropped to %sx%s", *image.size, width, height)
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def image_to_video(image: Image.Image, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(1, 3, frames, H, W) in [-1, 1]: the image repeated along time."""
    pixels = np.asarray(resize_center_crop(image, height, width), dtype=np.float32) / 127.5 - 1.0
    frame = torch.from_numpy(pixels).permute(2, 0, 1)
    return frame[None, :, None].expand(1, 3, num_frames, height, width).contiguous()


def load_images(images: ImageInput | Sequence[ImageInput]) -> list[Image.Image]:
    """Reference images as RGB PIL images; accepts PIL images and file paths."""
    if isinstance(images, Image.Image | str | Path):
        images = [images]
    images = list(images or [])
    if not images:
        raise SubjectError("Expected 3-10 reference images, but got none. Pass PIL images or file paths.")
    out = []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            out.append(check_image(item, what=f"reference image #{i}"))
            continue
        if not isinstance(item, str | Path):
            raise SubjectError(f"Expected a PIL image or a file path as image #{i}, but got {type(item).__name__}.")
        try:
            with Image.open(item) as opened:
                out.append(opened.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise SubjectError(
                f"Expected a readable image file as image #{i}, but got {str(item)!r} ({exc}). "
                "Check the path and the file format."
            ) from None
    return out
