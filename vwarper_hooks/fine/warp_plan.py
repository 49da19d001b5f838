"""One warp step's plan: flows from the matcher, then the foreground, cycle and final masks (eq. 3-6).

At warp step t the matcher compares both branches' match-layer features of step t-1. With masks
on, the foreground mask is the accumulated subject-token score above tau_fg, the cycle mask keeps
tokens whose round trip lands within eq. 5's threshold, and the injection mask is their product
(eq. 6). Everything stays on the model's device; `StepDiagnostics` copies it to the CPU only when
someone reads it.
"""

from __future__ import annotations

import torch

from .capture import RunState
from .cycle import cycle_mask
from .diagnostics import StepDiagnostics
from .warping import WarpPlan


def plan_warp(run: RunState, step: int, grid: tuple[int, int, int]) -> tuple[WarpPlan, StepDiagnostics]:
    """The `WarpPlan` the injector follows at `step`, and what to record of it.

    :param grid: (frames, height, width) of the video-token grid.
    """
    config = run.config
    flow, back = run.matcher.match(run.gen_match, run.ref_match, grid)
    fg = cc = score = None
    if config.mask:
        score = run.foreground.normalised()
        fg = score > config.tau_fg
        cc = cycle_mask(flow, back, grid, fg, config.tau_cc)
        mask = fg & cc
    else:
        mask = torch.ones_like(flow, dtype=torch.bool)
    # Reference tokens read by some masked generation token (no boolean indexing: no host sync).
    ref_mask = torch.zeros(mask.shape, device=mask.device).index_add_(0, flow, mask.float()) > 0
    diagnostics = StepDiagnostics(step, grid, flow, score, fg, cc, mask)
    return WarpPlan(flow=flow, mask=mask, ref_mask=ref_mask), diagnostics
