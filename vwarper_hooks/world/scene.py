"""A procedural world of textured objects with exact ground truth (deterministic by seed).

Each object has a shape, a texture, a named colour (said in the caption) and an identity detail the
caption never names: its second colour and the phase of its texture. Only a reference photo can
carry that detail, which is what V-Warper transfers. Objects translate with a known integer velocity
over a flat or faintly textured background, so every token's true position in any other frame (or in
another clip of the same object) is known, and so is every object's pixel mask.

Time: a clip is rendered at *latent* times 0, 1, 2 (the frames a 4x temporal stand-in VAE keeps);
`Clip.render(pixel_frames=9)` renders the 9 pixel frames in between as well (positions at t / 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

PIX = 32  # frame size in pixels
LATENT_FRAMES = 3  # latent frames of a training clip (9 pixel frames through the 4x temporal VAE)
TOKEN = 4  # pixels per token side (space-to-depth 2 x transformer patch 2)

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.9, 0.1),
    "purple": (0.55, 0.15, 0.75), "orange": (1.0, 0.55, 0.05), "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
TEXTURES = ("striped", "checkered", "dotted", "spotted")
SHAPES = ("circle", "square", "triangle", "diamond")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
WORDS = tuple(
    dict.fromkeys(
        "a on and photo of moving standing still flat textured background".split()
        + list(COLORS) + list(TEXTURES) + list(SHAPES) + list(DIRECTIONS)
    )
)


@dataclass(frozen=True)
class WorldObject:
    """One object. `detail_color` and `phase` are its hidden identity: no caption names them."""

    shape: str
    texture: str
    color: str
    detail_color: tuple[float, float, float]
    phase: float  # texture phase in [0, 1)
    angle: float  # stripe angle (radians)
    period: float  # texture period in pixels
    radius: int

    def local(self) -> tuple[np.ndarray, np.ndarray]:
        """(mask (64, 64) bool, colours (64, 64, 3) float32) in object coordinates, centre at (32, 32)."""
        v, u = np.mgrid[-32:32, -32:32].astype(np.float32) + 0.5
        r = float(self.radius)
        if self.shape == "circle":
            mask = u * u + v * v <= r * r
        elif self.shape == "square":
            mask = (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
        elif self.shape == "diamond":
            mask = np.abs(u) + np.abs(v) <= r * 1.15
        else:  # triangle, pointing up
            mask = (v <= r * 0.8) & (v >= -r) & (np.abs(u) <= (v + r) * 0.62)
        p, shift = self.period, self.phase * self.period
        if self.texture == "striped":
            s = u * math.cos(self.angle) + v * math.sin(self.angle)
            first = np.sin(2 * math.pi * (s + shift) / p) > 0
        elif self.texture == "checkered":
            first = (np.floor((u + shift) / p) + np.floor((v + shift) / p)) % 2 == 0
        elif self.texture == "dotted":
            du, dv = (u + shift) % p - p / 2, (v + shift) % p - p / 2
            first = du * du + dv * dv > (p * 0.32) ** 2
        else:  # spotted: smooth blobs from two sines
            first = np.sin(u / p * 2.1 + 6 * self.phase) + np.sin(v / p * 1.7 + 3 * self.phase + u / p) > 0.3
        colors = np.where(first[..., None], np.array(COLORS[self.color]), np.array(self.detail_color))
        return mask, colors.astype(np.float32)


@dataclass(frozen=True)
class Clip:
    """Objects (object 0 on top), their centres (frames, 2) in pixels (x, y) at latent times, a background."""

    objects: tuple[WorldObject, ...]
    centers: tuple[np.ndarray, ...] = field(repr=False)
    directions: tuple[str, ...]
    background: str
    background_noise: np.ndarray | None = field(default=None, repr=False)  # (PIX, PIX, 3) or None

    @property
    def caption(self) -> str:
        parts = []
        for obj, direction in zip(self.objects, self.directions, strict=True):
            motion = "standing still" if direction == "still" else f"moving {direction}"
            parts.append(f"a {obj.color} {obj.texture} {obj.shape} {motion}")
        kind = "flat" if self.background_noise is None else "textured"
        return " and ".join(parts) + f" on a {kind} {self.background} background"

    def centers_at(self, k: int, times: np.ndarray) -> np.ndarray:
        """(len(times), 2) centres of object k at (fractional) latent times, rounded to pixels."""
        c = self.centers[k]
        velocity = c[1] - c[0] if len(c) > 1 else np.zeros(2)
        return np.round(c[0][None] + times[:, None] * velocity[None]).astype(int)

    def render(self, pixel_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (video (F, PIX, PIX, 3) in [0, 1], masks (F, objects, PIX, PIX) bool).

        Default: the latent times (F = latent frames); `pixel_frames` 4(L-1)+1: every pixel frame.
        """
        n = len(self.centers[0])
        times = np.arange(n, dtype=np.float32) if pixel_frames is None else np.arange(pixel_frames) / 4.0
        base = np.broadcast_to(background_color(self.background), (PIX, PIX, 3))
        if self.background_noise is not None:
            base = np.clip(base + self.background_noise, 0, 1)
        video = np.empty((len(times), PIX, PIX, 3), np.float32)
        masks = np.zeros((len(times), len(self.objects), PIX, PIX), bool)
        locals_ = [obj.local() for obj in self.objects]
        positions = [self.centers_at(k, times) for k in range(len(self.objects))]
        for f in range(len(times)):
            frame = base.copy()
            for k in range(len(self.objects) - 1, -1, -1):
                _paste(frame, masks[f, k], *locals_[k], *positions[k][f])
            video[f] = frame
        for k in range(1, len(self.objects)):  # occlusion: what object 0 covers is not object k
            masks[:, k] &= ~masks[:, 0]
        return video, masks


def background_color(name: str) -> np.ndarray:
    """The RGB of a flat background named `name` (a colour word, toned down so objects stand out)."""
    return np.array(COLORS[name], np.float32) * 0.7 + 0.15


def _paste(frame: np.ndarray, coverage: np.ndarray, mask: np.ndarray, colors: np.ndarray, cx: int, cy: int) -> None:
    """Draw an object's local (64, 64) mask/colours centred at pixel (cx, cy) into frame, in place."""
    x0, y0 = cx - 32, cy - 32
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(PIX, x0 + 64), min(PIX, y0 + 64)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    m = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    frame[fy0:fy1, fx0:fx1][m] = colors[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0][m]
    coverage[fy0:fy1, fx0:fx1] |= m


def random_object(rng: np.random.Generator, color: str | None = None, shape: str | None = None) -> WorldObject:
    """A new object; its detail colour is kept far from its named colour."""
    color = color or str(rng.choice(list(COLORS)))
    main = np.array(COLORS[color])
    detail = rng.uniform(0, 1, 3)
    while np.abs(detail - main).sum() < 0.9:
        detail = rng.uniform(0, 1, 3)
    return WorldObject(
        shape=shape or str(rng.choice(SHAPES)),
        texture=str(rng.choice(TEXTURES)),
        color=color,
        detail_color=tuple(float(x) for x in detail),
        phase=float(rng.uniform(0, 1)),
        angle=float(rng.uniform(0, math.pi)),
        period=float(rng.uniform(4.0, 7.0)),
        radius=int(rng.integers(7, 12)),
    )


def random_clip(
    rng: np.random.Generator,
    objects: tuple[WorldObject, ...] | None = None,
    frames: int = LATENT_FRAMES,
    direction: str | None = None,
    background: str | None = None,
) -> Clip:
    """A clip of `frames` latent frames: 1 object (2 in 25% of clips) unless `objects` are given."""
    if objects is None:
        objects = tuple(random_object(rng) for _ in range(2 if rng.random() < 0.25 else 1))
    directions, centers = [], []
    for k, obj in enumerate(objects):
        d = direction if (direction and k == 0) else str(rng.choice(list(DIRECTIONS) + ["still"]))
        speed = int(rng.integers(2, 5)) if frames > 1 else 0
        velocity = np.array(DIRECTIONS.get(d, (0, 0))) * speed
        lo, hi = obj.radius // 2, PIX - obj.radius // 2
        span = velocity * (frames - 1)
        start = np.array([rng.integers(lo - min(0, s), hi - max(0, s) + 1) for s in span])
        centers.append(start[None] + np.arange(frames)[:, None] * velocity[None])
        directions.append(d if frames > 1 else "still")
    names = [c for c in COLORS if c not in {o.color for o in objects}]
    bg = background or str(rng.choice(names))
    noise = None
    if rng.random() < 0.3:
        coarse = rng.uniform(-0.12, 0.12, (4, 4, 3))
        noise = np.kron(coarse, np.ones((PIX // 4, PIX // 4, 1))).astype(np.float32)
    return Clip(tuple(objects), tuple(centers), tuple(directions), bg, noise)


def still_photo(obj: WorldObject, rng: np.random.Generator, background: str | None = None) -> Clip:
    """A one-frame "photo" of `obj` (a subject's reference image)."""
    return random_clip(rng, objects=(obj,), frames=1, background=background)


def token_correspondence(a: Clip, frame_a: int, b: Clip, frame_b: int) -> tuple[np.ndarray, np.ndarray]:
    """True token correspondences of object 0 from clip `a` (frame_a) to clip `b` (frame_b).

    Returns (source (N,) flat token index in a frame of a, target (N, 2) token coordinates (row, col) in b,
    fractional): for every token whose centre lies on object 0 in `a`, where that point of the object is
    in `b` (the same object-local point; the clips must show the same object 0).
    """
    mask_a = a.render()[1][frame_a, 0]
    grid = PIX // TOKEN
    rows, cols = np.mgrid[0:grid, 0:grid]
    centre_y, centre_x = rows * TOKEN + TOKEN // 2, cols * TOKEN + TOKEN // 2
    on = mask_a[centre_y, centre_x]
    shift = b.centers[0][frame_b] - a.centers[0][frame_a]  # (x, y) pixels
    target = np.stack([rows + shift[1] / TOKEN, cols + shift[0] / TOKEN], axis=-1)
    return np.flatnonzero(on.reshape(-1)), target.reshape(-1, 2)[on.reshape(-1)]


def with_object(clip: Clip, obj: WorldObject) -> Clip:
    """`clip` with its object 0 replaced by `obj` (same motion, background)."""
    return replace(clip, objects=(obj, *clip.objects[1:]))
