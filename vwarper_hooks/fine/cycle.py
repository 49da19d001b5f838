"""Cycle consistency and the final injection mask (paper eq. 5-6).

A generation token p is kept when following its flow to the reference and back lands near p:
``|p - F_ref->gen(F_gen->ref(p))| < tau_cc * H * (sum M_fg / (H * W))`` (eq. 5), the threshold
scaled by the foreground ratio of p's frame. The final mask is ``M = M_fg * M_cc`` (eq. 6).
"""

from __future__ import annotations

import torch

from .matching import token_coords


def cycle_error(flow_g2r: torch.Tensor, flow_r2g: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """|p - F_ref->gen(F_gen->ref(p))| in token units on the (row, column) grid; inf across frames."""
    start = torch.arange(flow_g2r.numel(), device=flow_g2r.device)
    back = flow_r2g[flow_g2r]
    a, b = token_coords(start, grid), token_coords(back, grid)
    err = (a[:, 1:] - b[:, 1:]).norm(dim=-1)
    return torch.where(a[:, 0] == b[:, 0], err, torch.full_like(err, float("inf")))


def cycle_mask(
    flow_g2r: torch.Tensor,
    flow_r2g: torch.Tensor,
    grid: tuple[int, int, int],
    fg_mask: torch.Tensor,
    tau_cc: float,
) -> torch.Tensor:
    """Eq. 5: error < tau_cc * H * (sum M_fg / (H * W)), the foreground ratio taken per frame."""
    frames, height, width = grid
    ratio = fg_mask.reshape(frames, height * width).float().mean(dim=1)  # (F,)
    threshold = (tau_cc * height * ratio).repeat_interleave(height * width)
    return cycle_error(flow_g2r, flow_r2g, grid) < threshold
