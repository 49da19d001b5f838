"""Reference photos as the models see them: read as a photo viewer shows them, checked, resized and
centre-cropped, repeated over time.

Every photo, whether a file path, a folder of photos, a PIL image, a numpy array or a torch tensor
passed in Python (`pixels`: diffusers' layouts), goes through `to_rgb`: EXIF orientation applied,
16-bit grey scaled to 8 bits and wider grey by its actual range (never clipped to white), palette
images expanded, and transparency composited onto white. Decompression bombs and unreadable files are
refused with a `SubjectError`, and so are images smaller than the model's token grid (`min_size`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SubjectError
from .pixels import array_images, wide_to_8bit

ImageInput = Image.Image | str | Path | np.ndarray | torch.Tensor
#: One image, or a folder of them (a path); several come as a sequence.
SINGLE = (Image.Image, str, Path, np.ndarray, torch.Tensor)
#: What a folder of photos holds (other files are skipped), as ``vwarper train --images DIR`` reads it.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

logger = logging.getLogger(__name__)

#: Modes that hold 16 (or 32) bits per grey value: scaled by 1/257 (65535 -> 255), wider values by their
#: actual range (`pixels.wide_to_8bit`), never clipped.
WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")
#: What a broken file can raise inside PIL besides OSError (truncated chunks, bad headers).
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def check_image(image: Image.Image, what: str = "reference image") -> Image.Image:
    """Refuse anything but an RGB PIL image (the form `to_rgb` / `load_images` produce)."""
    if not isinstance(image, Image.Image):
        raise SubjectError(f"Expected a PIL.Image.Image as {what}, but got {type(image).__name__}. Open it with PIL.")
    if image.mode != "RGB":
        raise SubjectError(
            f"Expected an RGB {what}, but got mode {image.mode!r}. Pass it through vwarper_hooks.images.load_images "
            "(or image.convert('RGB'))."
        )
    return image


def _flatten_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    if rgba.getextrema()[3][0] < 255:
        logger.info("image with transparency composited onto white")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(image: Image.Image, what: str = "reference image") -> Image.Image:
    """`image` as an 8-bit RGB picture, as a photo viewer shows it.

    EXIF orientation is applied (phone photos), 16-bit grey is scaled to 8 bits, palette images
    are expanded, and alpha (or palette / grey transparency) is composited onto white.
    """
    if not isinstance(image, Image.Image):
        raise SubjectError(f"Expected a PIL.Image.Image as {what}, but got {type(image).__name__}. Open it with PIL.")
    image = ImageOps.exif_transpose(image) or image
    if image.mode in WIDE_GREY:
        image = Image.fromarray(wide_to_8bit(np.asarray(image)))
    elif image.mode == "F":
        raise SubjectError(f"Expected a photo as {what}, but got a floating-point image (mode 'F'). Save it as "
                           "an 8-bit PNG or JPEG.")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _flatten_alpha(image)
    return image.convert("RGB") if image.mode != "RGB" else image


def cover_size(size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """(width, height) of `size` = (W, H) scaled, aspect kept, to the smallest size covering height x width."""
    scale = max(width / size[0], height / size[1])
    return max(width, round(size[0] * scale)), max(height, round(size[1] * scale))


def check_size(image: Image.Image, min_size: tuple[int, int] | None, what: str = "reference image") -> None:
    """Refuse an image smaller than `min_size` = (height, width) pixels (the model's token grid)."""
    if min_size is not None and (image.height < min_size[0] or image.width < min_size[1]):
        raise SubjectError(
            f"Expected {what} of at least {min_size[0]}x{min_size[1]} pixels (the model's token grid at this "
            f"size), but got {image.height}x{image.width}. Use a larger photo."
        )


def resize_center_crop(
    image: Image.Image, height: int, width: int, min_size: tuple[int, int] | None = None
) -> Image.Image:
    """Scale to cover (height, width), then crop the centre; logs when the size changes.

    :param min_size: (height, width) below which the image is refused (`units.VideoUnits.token_grid`).
    """
    check_image(image)
    check_size(image, min_size)
    if image.size == (width, height):
        return image
    logger.info("reference image %sx%s resized and cropped to %sx%s", *image.size, width, height)
    image = image.resize(cover_size(image.size, height, width), Image.Resampling.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def downscale_to_cover(image: Image.Image, height: int, width: int) -> Image.Image:
    """`image` shrunk (never enlarged) to the smallest size that still covers height x width.

    `resize_center_crop` of the result to (height, width) gives the same pixels as of `image`.
    """
    size = cover_size(image.size, height, width)
    if size[0] >= image.width or size[1] >= image.height:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def image_to_video(image: Image.Image, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(1, 3, frames, H, W) in [-1, 1]: the image repeated along time."""
    pixels = np.asarray(resize_center_crop(image, height, width), dtype=np.float32) / 127.5 - 1.0
    frame = torch.from_numpy(pixels).permute(2, 0, 1)
    return frame[None, :, None].expand(1, 3, num_frames, height, width).contiguous()


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Decode an image file fully (RGB, as `to_rgb` makes it); `SubjectError` when it cannot be read."""
    try:
        with Image.open(path) as opened:
            opened.load()
            return to_rgb(opened, what)
    except Image.DecompressionBombError as exc:
        raise SubjectError(
            f"Expected a photo of a sane size as {what}, but got {str(path)!r}: {exc}. Downscale it first "
            "(3-10 photos of about 1 megapixel are plenty)."
        ) from None
    except DECODE_ERRORS as exc:
        raise SubjectError(
            f"Expected a readable image file as {what}, but got {str(path)!r} ({type(exc).__name__}: {exc}). "
            "Check the path and the file format, or remove the file."
        ) from None


def image_files(folder: str | Path, what: str = "reference images") -> list[Path]:
    """The photos in `folder` (`IMAGE_SUFFIXES`, sorted by name); `SubjectError` when it holds none."""
    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise SubjectError(f"Expected image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {str(folder)!r} as "
                           f"{what}, but got none. Put 3-10 photos of the subject there.")
    return files


def _items(images: object) -> list[object]:
    """`images` as a list: one image (or folder) becomes a list of one; anything else is refused by name."""
    if isinstance(images, SINGLE):
        return [images]
    if isinstance(images, Iterable) and not isinstance(images, Mapping | bytes):
        return list(images)
    raise SubjectError(
        f"Expected reference photos as PIL images, numpy arrays, torch tensors, file paths or a folder (or a list "
        f"of them), but got {type(images).__name__}. Do pass e.g. [Image.open('photo.jpg'), ...] or 'photos/'."
    )


def _read(item: object, what: str) -> list[Image.Image]:
    """One entry of `load_images`' input as RGB images (a folder or a batched array gives several)."""
    if isinstance(item, Image.Image):
        return [to_rgb(item, what)]
    if isinstance(item, np.ndarray | torch.Tensor):
        return [to_rgb(image, what) for image in array_images(item, what)]
    if isinstance(item, str | Path):
        if Path(item).is_dir():
            return [open_image(path, f"{what} ({path.name})") for path in image_files(item)]
        return [open_image(item, what)]
    raise SubjectError(f"Expected a PIL image, numpy array, torch tensor, file path or folder as {what}, but got "
                       f"{type(item).__name__}. Do pass one of those.")


def load_images(
    images: ImageInput | Sequence[ImageInput], min_size: tuple[int, int] | None = None
) -> list[Image.Image]:
    """Reference images as RGB PIL images (`to_rgb`): PIL images, numpy arrays and torch tensors (diffusers'
    layouts, `pixels`; a batch gives several), file paths and folders of photos alike, or a sequence of them.

    :param min_size: (height, width) in pixels below which an image is refused (`units.VideoUnits.token_grid`).
    """
    items = _items(images)
    if not items:
        raise SubjectError("Expected 3-10 reference images, but got none. Pass PIL images or file paths.")
    out = []
    for i, item in enumerate(items):
        for image in _read(item, f"reference image #{i}"):
            check_size(image, min_size, f"reference image #{i}")
            out.append(image)
    return out
