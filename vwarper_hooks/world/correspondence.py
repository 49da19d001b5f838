"""Paper fig. 4 on learned features, scored with the world's exact ground truth.

Each pair: a reference clip (the object standing still, repeated over the frames, as V-Warper's
reference branch sees a photo) and a generation clip (the same object moving; the same background, or
another one). Both are noised to one timestep and go through the transformer as one batch, with the
generation's caption; every layer's intermediate features, post-RoPE Q/K and RoPE-free Q/K give a
generation->reference flow (`match_flows`, per frame). A generation token on the object is correct
when its flow lands within one token of the true reference position of the same object point.

Reported per descriptor and layer: PCK over all object tokens and over "far" tokens (true
displacement >= 2 tokens, where a same-position match is wrong), and the share of flows that land on
the token's own position. Baselines: the noisy latents themselves (pixels) and the identity flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..fine.matching import match_flows
from ..porting.features import DESCRIPTORS, capture_features
from .components import encode_captions, to_latents
from .scene import PIX, TOKEN, Clip, random_clip, random_object

GRID = PIX // TOKEN
FAR = 2.0  # tokens
BASELINES = ("pixels", "same position")


@dataclass
class PairTruth:
    """Ground truth of one pair: object tokens of the generation and their true reference coordinates."""

    tokens: np.ndarray  # (M,) flat generation token indices (frame-major)
    target: np.ndarray  # (M, 2) fractional (row, col) in the same frame of the reference

    def displacement(self) -> np.ndarray:
        rows, cols = np.divmod(self.tokens % (GRID * GRID), GRID)
        return np.hypot(self.target[:, 0] - rows, self.target[:, 1] - cols)


def make_pair(rng: np.random.Generator, same_background: bool, frames: int = 3) -> tuple[Clip, Clip, PairTruth]:
    """(reference clip, generation clip, truth) for one new object."""
    obj = random_object(rng)
    gen = random_clip(rng, objects=(obj,), frames=frames, direction=str(rng.choice(["left", "right", "up", "down"])))
    background = gen.background if same_background else None
    still = random_clip(rng, objects=(obj,), frames=1, background=background)
    ref = Clip(still.objects, (np.repeat(still.centers[0], frames, axis=0),), ("still",), still.background,
               still.background_noise if not same_background else gen.background_noise)
    tokens, targets = [], []
    for f in range(frames):
        source, target = _object_tokens(gen, f, ref)
        tokens.append(source + f * GRID * GRID)
        targets.append(target)
    return ref, gen, PairTruth(np.concatenate(tokens), np.concatenate(targets))


def _object_tokens(gen: Clip, frame: int, ref: Clip) -> tuple[np.ndarray, np.ndarray]:
    """Object-0 tokens of `gen` at `frame` whose true reference position lies inside the grid."""
    mask = gen.render()[1][frame, 0]
    rows, cols = np.mgrid[0:GRID, 0:GRID]
    on = mask[rows * TOKEN + TOKEN // 2, cols * TOKEN + TOKEN // 2].reshape(-1)
    shift = ref.centers[0][frame] - gen.centers[0][frame]  # (x, y) pixels
    target = np.stack([rows + shift[1] / TOKEN, cols + shift[0] / TOKEN], axis=-1).reshape(-1, 2)
    inside = (target >= -0.5).all(-1) & (target <= GRID - 0.5).all(-1)
    keep = np.flatnonzero(on & inside)
    return keep, target[keep]


@dataclass
class CorrespondenceTable:
    """Hits per (descriptor, layer) over all pairs; `rows()` gives the table."""

    timestep: int
    same_background: bool
    counts: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # [hits, far hits, same-pos, n, far n]

    def add(self, key: tuple[str, int], flow: np.ndarray, truth: PairTruth) -> None:
        local = flow[truth.tokens] % (GRID * GRID)
        got = np.stack(np.divmod(local, GRID), axis=-1)
        hit = np.hypot(*(got - truth.target).T) <= 1.0
        far = truth.displacement() >= FAR
        own = local == truth.tokens % (GRID * GRID)
        entry = self.counts.setdefault(key, [0.0] * 5)
        for i, value in enumerate((hit.sum(), (hit & far).sum(), own.sum(), len(hit), far.sum())):
            entry[i] += float(value)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (descriptor, layer), (hits, far_hits, own, n, far_n) in sorted(self.counts.items()):
            out.append({"timestep": self.timestep, "background": "same" if self.same_background else "different",
                        "descriptor": descriptor, "layer": layer, "pck_all": hits / max(n, 1),
                        "pck_far": far_hits / max(far_n, 1), "same_position": own / max(n, 1),
                        "tokens": int(n), "far_tokens": int(far_n)})
        return out

    def best(self, descriptor: str, key: str = "pck_far") -> dict[str, Any]:
        return max((r for r in self.rows() if r["descriptor"] == descriptor), key=lambda r: r[key])


@torch.no_grad()
def correspondence_table(pipe: Any, pairs: int = 24, timestep: int = 250, same_background: bool = True,
                         seed: int = 0) -> CorrespondenceTable:
    """Fig. 4 on `pairs` world pairs at one noise level (`pipe`: the learned world pipeline)."""
    rng = np.random.default_rng(seed)
    table = CorrespondenceTable(timestep, same_background)
    alphas = pipe.scheduler.alphas_cumprod.float()
    rope = pipe._prepare_rotary_positional_embeddings(PIX, PIX, 3, torch.device("cpu"))
    for index in range(pairs):
        ref, gen, truth = make_pair(rng, same_background)
        clean = to_latents(torch.from_numpy(np.stack([ref.render()[0], gen.render()[0]])))  # (2, 3, 12, 16, 16)
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed * 1000 + index))
        a = alphas[timestep]
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        text = encode_captions(pipe, [gen.caption, gen.caption])
        kwargs = dict(hidden_states=noisy, encoder_hidden_states=text, timestep=torch.full((2,), timestep),
                      image_rotary_emb=rope, return_dict=False)
        features = capture_features(pipe, kwargs)
        for descriptor in DESCRIPTORS:
            for layer, (q, k) in features[descriptor].items():
                flow, _ = match_flows(q[1].float(), k[1].float(), q[0].float(), k[0].float(), frames=3)
                table.add((descriptor, layer), flow.numpy(), truth)
        pixels = _patches(noisy)  # (2, 1, N, 48)
        flow, _ = match_flows(pixels[1], pixels[1], pixels[0], pixels[0], frames=3)
        table.add(("pixels", -1), flow.numpy(), truth)
        table.add(("same position", -1), np.arange(3 * GRID * GRID), truth)
    return table


def _patches(latents: torch.Tensor) -> torch.Tensor:
    """(B, F, C, 16, 16) -> (B, 1, F*8*8, C*4) unit-norm token vectors of the latents themselves."""
    b, f, c = latents.shape[:3]
    x = latents.reshape(b, f, c, GRID, 2, GRID, 2).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, 1, f * GRID * GRID, -1)
    return torch.nn.functional.normalize(x.float(), dim=-1)
