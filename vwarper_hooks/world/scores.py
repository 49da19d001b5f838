"""Identity and leakage of a generated world video, from the world's own colours (no downloaded model).

A subject's named colour (in the prompt) tells where the object is; its hidden detail colour (never in
any prompt) is what only the reference photos carry.

- object region: per frame, the box around the pixels near the named colour, grown by 2 pixels; its
  object pixels are those not near the background colour (named in the prompt too);
- identity: the share of the object pixels near the detail colour (a clip of the object itself gives the
  ceiling), and the distance from the detail colour to the mean of the object pixels that are not
  near the named colour (the second colour the video shows there);
- leakage: the share of pixels outside the object region near the detail colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import COLORS, WorldObject, background_color

NEAR = 0.3  # colour distance (RGB in [0, 1], Euclidean) that counts as "this colour"


@dataclass(frozen=True)
class VideoScore:
    identity: float  # share of object-region pixels near the detail colour
    detail_error: float  # distance of the region's detail-like pixels' mean to the detail colour
    leakage: float  # share of outside pixels near the detail colour
    found: float  # share of frames where the named colour was found at all


def object_region(frame: np.ndarray, named: np.ndarray, grow: int = 2) -> np.ndarray:
    """(H, W) bool box around the pixels within `NEAR` of the named colour (empty if there are none)."""
    near = np.linalg.norm(frame - named, axis=-1) < NEAR
    region = np.zeros(near.shape, bool)
    if near.sum() < 3:
        return region
    rows, cols = np.nonzero(near)
    region[max(0, rows.min() - grow) : rows.max() + grow + 1, max(0, cols.min() - grow) : cols.max() + grow + 1] = True
    return region


def score_video(video: np.ndarray, subject: WorldObject, background: str) -> VideoScore:
    """Score frames (F, H, W, 3) in [0, 1] of a video that should show `subject` on a flat `background`."""
    named, detail = np.array(COLORS[subject.color]), np.array(subject.detail_color)
    ground = background_color(background)
    identity, errors, leakage, found = [], [], [], 0
    for frame in video:
        region = object_region(frame, named)
        to_detail = np.linalg.norm(frame - detail, axis=-1)
        to_named = np.linalg.norm(frame - named, axis=-1)
        outside = ~region
        leakage.append(float((to_detail[outside] < NEAR).mean()) if outside.any() else 0.0)
        if not region.any():
            identity.append(0.0)
            errors.append(float(np.linalg.norm(named - detail)))
            continue
        found += 1
        body = region & (np.linalg.norm(frame - ground, axis=-1) >= NEAR)
        identity.append(float((to_detail[body] < NEAR).mean()) if body.any() else 0.0)
        detail_like = body & (to_named >= NEAR)
        errors.append(float(np.linalg.norm(frame[detail_like].mean(0) - detail)) if detail_like.sum() >= 2
                      else float(np.linalg.norm(named - detail)))
    return VideoScore(float(np.mean(identity)), float(np.mean(errors)), float(np.mean(leakage)), found / len(video))


def warp_fidelity(video: np.ndarray, photo: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> float:
    """Mean colour distance, over the masked tokens, between the video and the reference photo where the flow
    points: how well the warped region shows what the reference has there (lower: closer).

    :param video: (T, 32, 32, 3) frames in [0, 1], T = 4(F-1)+1 (latent frame f is video frame 4f).
    :param photo: (32, 32, 3) the reference photo in [0, 1] (the reference branch repeats it over time).
    :param flow: (F, 8, 8) reference token index per generation token (global over the repeated frames).
    :param mask: (F, 8, 8) bool, the tokens that were warped.
    """
    grid = video.shape[1] // 4

    def blocks(frame: np.ndarray) -> np.ndarray:  # (grid*grid, 3) mean colour of each 4x4 token
        return frame.reshape(grid, 4, grid, 4, 3).mean(axis=(1, 3)).reshape(-1, 3)

    ref = blocks(photo)
    distances = []
    for f in range(flow.shape[0]):
        gen = blocks(video[4 * f])
        target = flow[f].reshape(-1) % (grid * grid)
        chosen = mask[f].reshape(-1)
        distances += list(np.linalg.norm(gen[chosen] - ref[target[chosen]], axis=-1))
    return float(np.mean(distances)) if distances else float("nan")
