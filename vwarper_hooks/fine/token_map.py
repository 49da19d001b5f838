"""One warp step's token map: flows from the matcher, then the foreground, cycle and final masks (eq. 3-6).

At warp step t the matcher compares the generation's match-layer features of step t-1 with each
reference photo's. With masks on, a subject's foreground mask is its accumulated token score above
tau_fg, the cycle mask keeps tokens whose round trip (through the photo they read) lands within
eq. 5's threshold, and its injection mask is their product (eq. 6).

Several subjects: each is mapped on its own, and a video token is injected from at most one of
them: where masks overlap, the subject with the higher foreground score wins. The injector then
reads from all subjects' references side by side, so the flows are offset into that union.

Everything stays on the model's device; `StepDiagnostics` is copied to the CPU only when read.
"""

from __future__ import annotations

import torch

from ..contract.parts import ReferenceFeatures, TokenMap, as_match_result
from .capture import RunState, SubjectRun
from .cycle import cycle_mask
from .diagnostics import StepDiagnostics


def _map_subject(run: RunState, subject: SubjectRun, step: int, grid: tuple[int, int, int]) -> StepDiagnostics:
    config = run.config
    flow, back, reference = as_match_result(run.matcher.match(run.gen_match, subject.ref_match, grid))
    fg = cc = score = None
    if config.mask:
        score = subject.foreground.normalised()
        fg = score > config.tau_fg
        cc = cycle_mask(flow, back, grid, fg, config.tau_cc)
        mask = fg & cc
    else:
        mask = torch.ones_like(flow, dtype=torch.bool)
    return StepDiagnostics(step, grid, flow, score, fg, cc, mask, reference)


def map_tokens(run: RunState, step: int, grid: tuple[int, int, int]) -> tuple[TokenMap, list[StepDiagnostics]]:
    """The `TokenMap` the injector follows at `step`, and what to record of it, per subject.

    :param grid: (frames, height, width) of the video-token grid.
    """
    per_subject = [_map_subject(run, subject, step, grid) for subject in run.subjects]
    if len(per_subject) == 1:
        flow, mask = per_subject[0].flow, per_subject[0].mask
    else:
        flow, mask = _resolve_overlaps(run, per_subject)
    # Reference tokens read by some masked generation token (no boolean indexing: no host sync).
    total = sum(len(s.ref_match) for s in run.subjects) * flow.numel()
    ref_mask = torch.zeros(total, device=mask.device).index_add_(0, flow, mask.float()) > 0
    return TokenMap(flow=flow, mask=mask, ref_mask=ref_mask), per_subject


def _resolve_overlaps(run: RunState, plans: list[StepDiagnostics]) -> tuple[torch.Tensor, torch.Tensor]:
    """One flow into all subjects' references side by side, each token from at most one subject
    (the one with the highest foreground score among those whose mask takes it)."""
    n = plans[0].flow.numel()
    offsets, offset = [], 0
    for subject in run.subjects:
        offsets.append(offset)
        offset += len(subject.ref_match) * n
    masks = torch.stack([p.mask for p in plans])  # (S, N)
    scores = torch.stack([p.fg_score if p.fg_score is not None else torch.ones(n, device=masks.device)
                          for p in plans])
    winner = torch.where(masks, scores, torch.full_like(scores, -1.0)).argmax(dim=0)  # (N,)
    flows = torch.stack([p.flow + o for p, o in zip(plans, offsets, strict=True)])
    for s, plan in enumerate(plans):
        plan.mask = plan.mask & (winner == s)
    return flows.gather(0, winner[None])[0], masks.any(dim=0)


def side_by_side(run: RunState, layer: int) -> ReferenceFeatures:
    """Layer `layer`'s reference values (and keys) of every subject and photo, as one (1, heads, M, d)."""
    parts = [s.ref_values[layer] for s in run.subjects]
    if len(parts) == 1 and parts[0].value.shape[0] == 1:
        return parts[0]  # one subject, one photo: the captured views as they are

    def joined(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        if tensors[0] is None:
            return None
        # (k, H, N, d) -> (1, H, k*N, d): photo 0's tokens, then photo 1's, ...
        flat = [t.transpose(0, 1).reshape(1, t.shape[1], -1, t.shape[3]) for t in tensors]
        return flat[0] if len(flat) == 1 else torch.cat(flat, dim=2)

    return ReferenceFeatures(value=joined([p.value for p in parts]), key=joined([p.key for p in parts]))
