"""Reference photos are read as a photo viewer shows them, from files and from PIL images alike."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.errors import SubjectError
from vwarper_hooks.images import load_images, resize_center_crop

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def halves(width: int = 40, height: int = 20, left=RED, right=BLUE, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (width, height), left)
    image.paste(Image.new(mode, (width // 2, height), right), (width // 2, 0))
    return image


def rotated_jpeg(path):
    """Stored landscape (red | blue), EXIF orientation 6: a viewer turns it 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    halves().save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def near(pixel, colour, tol: int = 40) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, colour, strict=True))


def test_exif_orientation_is_applied(tmp_path):
    (image,) = load_images([rotated_jpeg(tmp_path / "phone.jpg")])
    assert image.size == (20, 40)  # portrait, as shown on the phone
    pixels = np.asarray(image)
    assert near(pixels[5, 10], RED) and near(pixels[35, 10], BLUE)  # the left half went to the top


def test_sixteen_bit_grey_is_scaled_not_clipped_to_white(tmp_path):
    grey = np.full((24, 24), 128 * 257, dtype=np.uint16)
    grey[:, :12] = 64 * 257
    Image.fromarray(grey).save(tmp_path / "scan.png")  # a 16-bit PNG ("I;16" or "I" when read back)
    for source in (tmp_path / "scan.png", Image.fromarray(grey)):
        (image,) = load_images([source])
        pixels = np.asarray(image)
        assert image.mode == "RGB" and tuple(pixels[0, 0]) == (64,) * 3 and tuple(pixels[0, 20]) == (128,) * 3


def test_palette_with_transparency_and_rgba_become_white_where_transparent(tmp_path):
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette.paste(1, (10, 0, 20, 20))  # right half red, left half the transparent (black) index
    palette.save(tmp_path / "logo.png", transparency=0)
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (10, 20), (*BLUE, 255)), (10, 0))
    rgba.save(tmp_path / "cutout.png")
    loaded = load_images([tmp_path / "logo.png", tmp_path / "cutout.png", rgba, Image.open(tmp_path / "logo.png")])
    for image, colour in zip(loaded, (RED, BLUE, BLUE, RED), strict=True):
        pixels = np.asarray(image)
        assert image.mode == "RGB" and tuple(pixels[5, 2]) == WHITE and tuple(pixels[5, 15]) == colour


def test_pil_images_follow_the_file_rules_in_subjects(clock_image):
    rgba = clock_image.convert("RGBA")
    subject = vwarper.Subject.from_images([rgba, clock_image.convert("P")], token="<clock>", class_word="clock")
    assert all(image.mode == "RGB" for image in subject.images)
    assert np.array_equal(np.asarray(subject.images[0]), np.asarray(clock_image))  # opaque: unchanged


def test_images_smaller_than_the_token_grid_are_refused():
    with pytest.raises(SubjectError, match=r"at least 30x45 pixels .* but got 20x40"):
        load_images([Image.new("RGB", (40, 20))], min_size=(30, 45))
    with pytest.raises(SubjectError, match="at least 2x2"):
        resize_center_crop(Image.new("RGB", (1, 1)), 32, 32, min_size=(2, 2))


def test_decompression_bomb_and_damaged_files_are_subject_errors(tmp_path):
    Image.new("1", (14000, 13000)).save(tmp_path / "bomb.png")  # 182 M pixels in a few kB
    good = io.BytesIO()
    halves().save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:60])
    (tmp_path / "noise.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    for name, words in (("bomb.png", "sane size"), ("truncated.png", "readable"), ("noise.jpg", "readable")):
        with pytest.raises(SubjectError, match=words) as info:
            load_images([tmp_path / name])
        assert "\n" not in str(info.value)


def test_saved_subjects_keep_photos_only_as_large_as_training_needs(tmp_path):
    big = Image.effect_mandelbrot((600, 450), (-2, -1.5, 1, 1.5), 60).convert("RGB")
    subject = vwarper.Subject(token="<clock>", class_word="clock", images=[big],
                              info={"training": {"height": 32, "width": 48}})
    subject.save(tmp_path / "s")
    stored = Image.open(tmp_path / "s" / "images" / "00.png")
    assert stored.size == (48, 36)  # covers 48x32 with the aspect kept
    same = [np.asarray(resize_center_crop(im, 32, 48)) for im in (stored.convert("RGB"), big)]
    assert np.array_equal(*same)  # training and generation at that size see the very same pixels
    loaded = vwarper.Subject.load(tmp_path / "s")
    assert loaded.images[0].size == (48, 36)
    assert json.loads((tmp_path / "s" / "subject.json").read_text())["images"] == ["images/00.png"]
    untrained = vwarper.Subject(token="<clock>", class_word="clock", images=[big])
    untrained.save(tmp_path / "u")
    assert Image.open(tmp_path / "u" / "images" / "00.png").size == (600, 450)  # no training size: as given
