"""RoPE-free Q/K correspondence between the generation and reference branches (paper eq. 3-4).

Per head h (the attention's own temperature 1/sqrt(d)):

    L_h[i, j] = <Q_gen[h, i], K_ref[h, j]> / sqrt(d),   L'_h[j, i] = <Q_ref[h, j], K_gen[h, i]> / sqrt(d)

``head_combine="probs"`` (default; DiffTrack's reading, the lab whose analysis the paper follows):
a softmax per head, then the probabilities averaged over heads, in both directions:

    C_gen->ref = mean_h softmax_j(L_h),   C_ref->gen = mean_h softmax_i(L'_h)

``head_combine="logits"``: the logits averaged over heads first, then one softmax (the same as
concatenating heads and scaling by 1/(H sqrt(d))). Either way:

    C_hat = (C_gen->ref + C_ref->gen^T) / 2
    flow_gen->ref[i] = argmax_j C_hat[i, j],   flow_ref->gen[j] = argmax_i C_hat[i, j]

The N x N matrix is never held: pass 1 streams each head's row log-sum-exps of L_h and L'_h, pass 2
streams blocks of gen rows, head by head, taking row argmaxes and a running column max. Memory
O(groups x chunk x n), whatever the number of heads.

Matching is grouped: per-frame (default) matches generation frame f against reference frame f;
global matches all generation tokens against all reference tokens. Per-frame is the default
because the reference branch is one image repeated in time, so its frames are near-duplicates:
global matching would spend F times the compute choosing between copies of the same content.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from ..config import WarpConfig
from ..contract.calls import AttentionCall
from ..contract.hookspecs import hookimpl
from ..contract.parts import Matcher, MatchResult

HeadCombine = Literal["probs", "logits"]

#: Photo scores (row maxima of the symmetric map, in (0, 1]) within this relative distance of the best
#: are a tie, and a tie goes to the lower photo index: identical copies of a photo batched in one reference
#: forward get features about 1e-6 apart (stock CogVideoX does the same for identical batch rows), which
#: must not pick a copy. Half-precision features widen it to 4 eps of their dtype (`tie_tolerance`).
TIE_RTOL = 1e-3


def tie_tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance of a tie between photo scores computed from features of `dtype`."""
    return max(TIE_RTOL, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else TIE_RTOL


def first_best(scores: torch.Tensor, rtol: float = TIE_RTOL) -> torch.Tensor:
    """Along dim 0, the lowest index whose score is within `rtol` (relative) of the best: stable under
    float noise (no host read). (k, ...) -> (...) long."""
    top = scores.max(dim=0, keepdim=True).values
    index = torch.arange(scores.shape[0], device=scores.device).view(-1, *([1] * (scores.ndim - 1)))
    near = scores >= top - rtol * top.abs()
    return torch.where(near, index, scores.shape[0]).amin(dim=0)


def _grouped(x: torch.Tensor, frames: int, per_frame: bool, combine: HeadCombine) -> torch.Tensor:
    """(H, N, d) -> (G, h, n, d'): G = frames if per_frame else 1; h = H, d' = d for "probs";
    h = 1, d' = H*d (heads concatenated) for "logits"."""
    heads, tokens, dim = x.shape
    groups = frames if per_frame else 1
    x = x.reshape(heads, groups, tokens // groups, dim).permute(1, 0, 2, 3)  # (G, H, n, d)
    if combine == "logits":
        x = x.permute(0, 2, 1, 3).reshape(groups, 1, tokens // groups, heads * dim)
    return x


def _row_logsumexp(q: torch.Tensor, k: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per head, logsumexp over keys of q @ k^T, streamed over blocks of q rows and heads. (G, h, n)."""
    out = torch.empty(q.shape[:3], dtype=q.dtype, device=q.device)
    for head in range(q.shape[1]):
        for start in range(0, q.shape[2], chunk):
            block = q[:, head, start : start + chunk] @ k[:, head].transpose(1, 2)
            out[:, head, start : start + chunk] = torch.logsumexp(block, dim=-1)
    return out


def _mean_probs(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """mean_h exp(q_h k_h^T - lse_h): (G, h, a, d), (G, h, b, d), (G, h, a) -> (G, a, b)."""
    total = torch.zeros(q.shape[0], q.shape[2], k.shape[2], dtype=q.dtype, device=q.device)
    for head in range(q.shape[1]):
        total += torch.exp(q[:, head] @ k[:, head].transpose(1, 2) - lse[:, head, :, None])
    return total / q.shape[1]


def match_flows(
    q_gen: torch.Tensor,
    k_gen: torch.Tensor,
    q_ref: torch.Tensor,
    k_ref: torch.Tensor,
    frames: int,
    per_frame: bool = True,
    chunk: int = 1024,
    head_combine: HeadCombine = "probs",
    with_best: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Bidirectional argmax flows from RoPE-free features of one generation and one reference sample.

    :param q_gen, k_gen, q_ref, k_ref: (heads, N, head_dim) video-token features, N = frames x h x w.
    :param frames: number of token frames (groups for per-frame matching).
    :param head_combine: "probs" (per-head softmax, probabilities averaged) or "logits" (see module doc).
    :param with_best: also return each generation token's max_j C_hat[i, j], (N,) float32: how well it
        matches (to pick among several references, and to score a whole photo by the mean).
    :return: (flow_gen_to_ref, flow_ref_to_gen), each (N,) long: global token indices of the other
        branch (plus the row maxima with `with_best`).
    """
    heads, tokens, head_dim = q_gen.shape
    if q_ref.shape != q_gen.shape or k_ref.shape != k_gen.shape:
        raise ValueError(f"Expected equal gen/ref shapes, but got {tuple(q_gen.shape)} and {tuple(q_ref.shape)}.")
    if tokens % frames:
        raise ValueError(f"Expected tokens divisible by frames, but got {tokens} tokens and {frames} frames.")
    if head_combine not in ("probs", "logits"):
        raise ValueError(f"Expected head_combine 'probs' or 'logits', but got {head_combine!r}.")
    scale = 1.0 / ((heads if head_combine == "logits" else 1) * math.sqrt(head_dim))
    qg, qr = (_grouped(x, frames, per_frame, head_combine) * scale for x in (q_gen, q_ref))
    kg, kr = (_grouped(x, frames, per_frame, head_combine) for x in (k_gen, k_ref))
    groups, n = qg.shape[0], qg.shape[2]

    lse_gen = _row_logsumexp(qg, kr, chunk)  # (G, h, n) rows of L_h
    lse_ref = _row_logsumexp(qr, kg, chunk)  # (G, h, n) rows of L'_h

    flow_g2r = torch.empty(groups, n, dtype=torch.long, device=qg.device)
    row_best = torch.empty(groups, n, dtype=qg.dtype, device=qg.device)
    col_best = torch.full((groups, n), -1.0, dtype=qg.dtype, device=qg.device)
    flow_r2g = torch.zeros(groups, n, dtype=torch.long, device=qg.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        forward = _mean_probs(qg[:, :, start:stop], kr, lse_gen[:, :, start:stop])  # (G, c, n)
        backward = _mean_probs(qr, kg[:, :, start:stop], lse_ref).transpose(1, 2)  # (G, c, n)
        sym = 0.5 * (forward + backward)  # rows = gen tokens start..stop
        row_best[:, start:stop], flow_g2r[:, start:stop] = sym.max(dim=-1)
        block_best, block_arg = sym.max(dim=1)
        better = block_best > col_best
        col_best = torch.where(better, block_best, col_best)
        flow_r2g = torch.where(better, block_arg + start, flow_r2g)

    offsets = (torch.arange(groups, device=qg.device) * n)[:, None]
    flows = (flow_g2r + offsets).reshape(-1), (flow_r2g + offsets).reshape(-1)
    return (*flows, row_best.float().reshape(-1)) if with_best else flows


def union_flows(
    per_reference: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], rtol: float = TIE_RTOL
) -> MatchResult:
    """Flows into the union of several references, each matched on its own (eq. 3-4 per reference).

    :param per_reference: (flow_gen_to_ref, flow_ref_to_gen, row maxima) of each reference, N tokens each.
    :return: (flow into [ref 0 tokens, ref 1 tokens, ...] (N,), the references' reverse flows side by side
        (k*N,), the reference each generation token reads (N,)): every token reads the reference whose
        symmetric map scores it highest (the first on a tie within `rtol`, `first_best`, so identical copies
        change nothing), and cycle consistency (`cycle_mask`) then goes through that same reference.
    """
    n = per_reference[0][0].numel()
    best = torch.stack([r[2] for r in per_reference])  # (k, N)
    choice = first_best(best, rtol)  # (N,)
    flows = torch.stack([r[0] for r in per_reference])  # (k, N)
    flow = flows.gather(0, choice[None])[0] + choice * n
    back = torch.cat([r[1] for r in per_reference])
    return MatchResult(flow, back, choice)


def token_coords(index: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(N,) global token indices -> (N, 3) float (frame, row, column)."""
    _, height, width = grid
    frame, rest = index // (height * width), index % (height * width)
    return torch.stack([frame, rest // width, rest % width], dim=-1).float()


def pck(
    flow: torch.Tensor,
    target: torch.Tensor,
    grid: tuple[int, int, int],
    alpha: float = 0.05,
    valid: torch.Tensor | None = None,
) -> float:
    """Percentage of correct keypoints: flow within alpha x max(h, w) tokens of target (same frame)."""
    got, want = token_coords(flow, grid), token_coords(target, grid)
    dist = (got[:, 1:] - want[:, 1:]).norm(dim=-1)
    ok = (dist <= alpha * max(grid[1], grid[2])) & (got[:, 0] == want[:, 0])
    if valid is not None:
        ok = ok[valid]
    return float(ok.float().mean()) if ok.numel() else float("nan")


class RopeFreeMatcher:
    """The paper's matcher (4.2-4.3): RoPE-free query/key of the match layer, eq. 3-4, streamed."""

    name = "rope_free"
    rotated = False

    def __init__(self, config: WarpConfig) -> None:
        self.per_frame = config.per_frame_matching
        self.chunk = config.match_chunk
        self.head_combine = config.head_combine

    def features(self, call: AttentionCall, sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = call.query[sample : sample + 1, :, call.video]  # (1, H, N, d)
        k = call.key[sample : sample + 1, :, call.video]
        if self.rotated:
            q, k = call.rope(q), call.rope(k)
        return q[0].clone(), k[0].clone()

    def match(self, gen: tuple, refs: list[tuple], grid: tuple[int, int, int]) -> MatchResult:
        if len(refs) == 1:
            return MatchResult(*self._flows(gen, refs[0], grid, with_best=False))
        per_reference = [self._flows(gen, ref, grid, with_best=True) for ref in refs]
        return union_flows(per_reference, tie_tolerance(gen[0].dtype))

    def score(self, gen: tuple, ref: tuple, grid: tuple[int, int, int]) -> torch.Tensor:
        """How well `ref` matches `gen`: the mean of the symmetric map's row maxima (a 0-d tensor)."""
        return self._flows(gen, ref, grid, with_best=True)[2].mean()

    def _flows(self, gen: tuple, ref: tuple, grid: tuple[int, int, int], with_best: bool) -> tuple:
        return match_flows(*gen, *ref, frames=grid[0], per_frame=self.per_frame, chunk=self.chunk,
                           head_combine=self.head_combine, with_best=with_best)


class RotatedMatcher(RopeFreeMatcher):
    """Post-RoPE query/key (the paper's figure 4-5 ablation: positions pull matches to the same place)."""

    name = "rope"
    rotated = True


BUILTIN_MATCHERS: dict[str, type] = {cls.name: cls for cls in (RopeFreeMatcher, RotatedMatcher)}


@hookimpl
def register_matchers(register: Callable[[str, Callable[[WarpConfig], Matcher]], None]) -> None:
    for name, cls in BUILTIN_MATCHERS.items():
        register(name, cls)
