"""Correspondence analysis (paper figure 4): per-layer PCK of three descriptors.

One transformer forward of a batch ``[reference, generation]`` captures, at every attention layer,

- ``hidden``: the intermediate features entering the attention (cosine matching),
- ``qk_raw``: query / key as attention sees them (after RoPE),
- ``qk_ropefree``: query / key after QK-norm, before RoPE (what V-Warper matches with).

Each gives a generation->reference flow (`matching.match_flows`, per frame), scored with PCK@alpha
(alpha x max(h, w) tokens) against either a synthetic known warp (the generation latent is the
reference latent shifted by some tokens) or a pseudo ground truth from a dense matcher (e.g. DINO
patch features of the generated frames against the reference image), the paper's protocol.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..coarse.objective import objective_for
from ..fine.matching import match_flows, pck
from ..images import image_to_video
from ..plugins import get_adapter
from ..porting.features import DESCRIPTORS, LABELS, capture_features
from .evaluation import DEFAULT_DINO, DinoEmbedder
from .visualize import frame_for_latent, grid, resize, warp_reference

logger = logging.getLogger(__name__)

#: (generated frames (F x PIL), reference image (PIL), token grid (F, h, w)) -> (F*h*w,) reference token index
Matcher = Callable[[list[Image.Image], Image.Image, tuple[int, int, int]], torch.Tensor]


@dataclass
class PckResult:
    """PCK per (layer, descriptor); `rows` are dicts with layer, descriptor, pck."""

    mode: str
    grid: tuple[int, int, int]
    alpha: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    flows: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)
    #: uint8 pictures for `warp_figure`: "reference" (H, W, 3), "generated" (F, H, W, 3) one per token frame
    pictures: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def curve(self, descriptor: str) -> list[float]:
        return [r["pck"] for r in sorted(self.rows, key=lambda r: r["layer"]) if r["descriptor"] == descriptor]

    def best(self, descriptor: str) -> tuple[int, float]:
        """(layer, pck) with the highest PCK for `descriptor`."""
        row = max((r for r in self.rows if r["descriptor"] == descriptor), key=lambda r: r["pck"])
        return row["layer"], row["pck"]

    def to_dict(self) -> dict[str, Any]:
        best = {d: dict(zip(("layer", "pck"), self.best(d), strict=True)) for d in DESCRIPTORS}
        return {"mode": self.mode, "grid": list(self.grid), "alpha": self.alpha, "best": best}

    def save_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["layer", "descriptor", "pck"])
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda r: (r["layer"], DESCRIPTORS.index(r["descriptor"]))))
        return path

    def warp_figure(self, layer: int | None = None) -> tuple[np.ndarray, int]:
        """Paper figure 5 (a)-(c): rows = generated frames, then the reference warped by each descriptor's flow.

        :param layer: the layer whose flows are shown; default: the best layer of RoPE-free Q/K.
        :return: the picture (tiles laid out by `visualize.grid`) and the layer.
        """
        layer = self.best("qk_ropefree")[0] if layer is None else layer
        generated, reference = self.pictures["generated"], self.pictures["reference"]
        size = generated.shape[1:3]
        rows = [list(generated)]
        for descriptor in DESCRIPTORS:
            flow = self.flows[(descriptor, layer)].reshape(self.grid)
            rows.append(list(warp_reference(reference, flow, size)))
        return grid(rows), layer

    def plot(self, path: str | Path) -> Path:
        """Figure-4 style: PCK over layers, one line per descriptor."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
        layers = sorted({r["layer"] for r in self.rows})
        for descriptor in DESCRIPTORS:
            ax.plot(layers, self.curve(descriptor), marker="o", markersize=3, label=LABELS[descriptor])
        ax.set_xlabel("layer")
        ax.set_ylabel(f"PCK@{self.alpha:g}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"correspondence accuracy per layer ({self.mode})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return Path(path)


def score(
    features: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]],
    target: torch.Tensor,
    grid: tuple[int, int, int],
    alpha: float = 0.05,
    valid: torch.Tensor | None = None,
    mode: str = "",
) -> PckResult:
    """PCK of every descriptor and layer; batch index 0 is the reference, 1 the generation."""
    result = PckResult(mode=mode, grid=grid, alpha=alpha)
    for descriptor in DESCRIPTORS:
        for layer, (q, k) in sorted(features[descriptor].items()):
            flow, _ = match_flows(q[1].float(), k[1].float(), q[0].float(), k[0].float(), frames=grid[0])
            result.flows[(descriptor, layer)] = flow
            result.rows.append({"layer": layer, "descriptor": descriptor,
                                "pck": pck(flow, target, grid, alpha=alpha, valid=valid)})
    return result


def _forward_kwargs(pipe: Any, latents: torch.Tensor, timestep: int, prompt: str) -> dict:
    """Transformer kwargs for a batch of latents: the adapter's standalone call, as training makes it."""
    transformer, adapter = pipe.transformer, get_adapter(pipe.transformer)
    device = latents.device
    with torch.no_grad():
        text = adapter.encode_text(pipe, prompt, adapter.text_template(pipe, device))
    t = torch.full((latents.shape[0],), timestep, device=device, dtype=torch.long)
    return adapter.forward_kwargs(pipe, latents.to(transformer.dtype), t, text)


def _noised(pipe: Any, clean: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
    """`clean` noised to model timestep `timestep` the way the scheduler's training objective does it."""
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)).to(clean)
    t = torch.full((clean.shape[0],), timestep)
    return objective_for(pipe.scheduler).noisy_and_target(clean, noise, t)[0]


def synthetic_shift(
    pipe: Any, reference: Image.Image, shift: int = 2, frames: int = 5, size: tuple[int, int] | None = None,
    timestep: int = 500, alpha: float = 0.05, prompt: str = "a photo", seed: int = 0,
) -> PckResult:
    """PCK against a known warp: the generation latent is the noised reference latent shifted right by `shift` tokens.

    Tokens in the first `shift` columns have no source and are left out.
    """
    transformer, adapter = pipe.transformer, get_adapter(pipe.transformer)
    height, width = size or adapter.default_size(pipe)
    device = pipe._execution_device
    with torch.no_grad():
        clean = adapter.encode_video(pipe, image_to_video(reference, frames, height, width).to(device))
    ref = _noised(pipe, clean.float(), timestep, seed)
    grid = adapter.token_grid(transformer, ref)
    per_token = ref.shape[-1] // grid[2]
    gen = torch.roll(ref, shifts=shift * per_token, dims=-1)
    features = capture_features(pipe, _forward_kwargs(pipe, torch.cat([ref, gen]), timestep, prompt))
    idx = torch.arange(grid[0] * grid[1] * grid[2])
    result = score(features, idx - shift, grid, alpha, valid=idx % grid[2] >= shift, mode=f"known shift of {shift}")
    picture = resize(reference, height, width)
    moved = np.roll(picture, shift * (width // grid[2]), axis=1)  # the generation's content, in pixels
    result.pictures = {"reference": picture, "generated": np.stack([moved] * grid[0])}
    return result


def dense_matcher_truth(
    pipe: Any, video: Any, reference: Image.Image, matcher: Matcher, timestep: int = 500,
    alpha: float = 0.05, prompt: str = "a photo", seed: int = 0, valid: torch.Tensor | None = None,
) -> PckResult:
    """PCK against a dense matcher's correspondences (paper appendix B.1) for a generated video.

    :param video: ``(T, H, W, 3)`` uint8 frames (T = 4k+1 for CogVideoX).
    :param valid: optional ``(F*h*w,)`` foreground tokens to score (the paper uses Grounded-SAM masks).
    """
    transformer, adapter = pipe.transformer, get_adapter(pipe.transformer)
    frames, height, width = video.shape[:3]
    device = pipe._execution_device
    pixels = torch.as_tensor(video).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1.0).to(device)
    with torch.no_grad():
        gen_clean = adapter.encode_video(pipe, pixels)
        ref_clean = adapter.encode_video(pipe, image_to_video(reference, frames, height, width).to(device))
    ref, gen = _noised(pipe, ref_clean.float(), timestep, seed), _noised(pipe, gen_clean.float(), timestep, seed)
    grid = adapter.token_grid(transformer, ref)
    features = capture_features(pipe, _forward_kwargs(pipe, torch.cat([ref, gen]), timestep, prompt))
    shown = [Image.fromarray(video[frame_for_latent(f, grid[0], frames)]) for f in range(grid[0])]
    picture = resize(reference, height, width)
    target = matcher(shown, Image.fromarray(picture), grid)
    result = score(features, target, grid, alpha, valid=valid, mode="pseudo ground truth")
    result.pictures = {"reference": picture, "generated": np.stack([np.asarray(im) for im in shown])}
    return result


def full_frame_kwargs(processor: Any) -> dict[str, Any]:
    """Processor overrides that keep the whole frame: a centre crop would cut the borders off the
    patch map, which is then stretched over the full token grid (wrong correspondences)."""
    if not getattr(processor, "do_center_crop", False):
        return {}  # e.g. ViTImageProcessor (facebook/dino-vits16): resizes the whole frame already
    crop = processor.crop_size
    return {"do_center_crop": False, "size": {"height": crop["height"], "width": crop["width"]}}


class DinoMatcher:
    """Dense matcher from DINO patch features (nearest neighbour by cosine on the token grid)."""

    def __init__(self, model_id: str | None = None, device: str = "cpu", embedder: Any = None) -> None:
        self.embedder = embedder or DinoEmbedder(model_id or DEFAULT_DINO, device=device)

    @torch.no_grad()
    def patch_features(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """(len(images), h*w, D) unit-norm patch features resized to the token grid `size`."""
        emb = self.embedder
        pixels = emb.processor(images=images, return_tensors="pt", **full_frame_kwargs(emb.processor))
        pixels = pixels["pixel_values"].to(emb.device)
        tokens = emb.model(pixel_values=pixels).last_hidden_state[:, 1:].float().cpu()
        side = round(tokens.shape[1] ** 0.5)
        tokens = tokens[:, -side * side :]  # drop register tokens, if any
        maps = tokens.reshape(len(images), side, side, -1).permute(0, 3, 1, 2)
        maps = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return torch.nn.functional.normalize(maps.flatten(2).transpose(1, 2), dim=-1)

    def __call__(self, frames: list[Image.Image], reference: Image.Image, grid: tuple[int, int, int]) -> torch.Tensor:
        count, h, w = grid
        gen = self.patch_features(frames, (h, w))
        ref = self.patch_features([reference], (h, w))[0]
        local = (gen @ ref.T).argmax(-1)  # (F, h*w)
        return (local + torch.arange(count)[:, None] * h * w).reshape(-1)
