"""RoPE-free Q/K correspondence between the generation and reference branches (paper eq. 3-4).

Logits: ``L[i, j] = mean_h <Q_gen[h, i], K_ref[h, j]> / sqrt(d)``: heads are combined by
averaging their scaled logits (the same as concatenating heads and dividing by H * sqrt(d)).

    C_gen->ref = softmax_j(L),   C_ref->gen = softmax_i(L')   with  L' = Q_ref K_gen^T
    C_hat = (C_gen->ref + C_ref->gen^T) / 2
    flow_gen->ref[i] = argmax_j C_hat[i, j],   flow_ref->gen[j] = argmax_i C_hat[i, j]

The N x N matrix is never held: pass 1 streams row log-sum-exps of L and L', pass 2 streams
blocks of gen rows, taking row argmaxes and a running column max. Memory O(groups x chunk x n).

Matching is grouped: per-frame (default) matches generation frame f against reference frame f;
global matches all generation tokens against all reference tokens. Per-frame is the default
because the reference branch is one image repeated in time, so its frames are near-duplicates:
global matching would spend F times the compute choosing between copies of the same content.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from ..adapter import AttentionCall
from ..config import WarpConfig
from ..hookspecs import hookimpl


def _grouped(x: torch.Tensor, frames: int, per_frame: bool) -> torch.Tensor:
    """(H, N, d) -> (G, n, H*d), G = frames if per_frame else 1."""
    heads, tokens, dim = x.shape
    groups = frames if per_frame else 1
    x = x.reshape(heads, groups, tokens // groups, dim)
    return x.permute(1, 2, 0, 3).reshape(groups, tokens // groups, heads * dim)


def _scale(q: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    return q * (1.0 / (heads * math.sqrt(head_dim)))


def _row_logsumexp(q: torch.Tensor, k: torch.Tensor, chunk: int) -> torch.Tensor:
    """logsumexp over keys of q @ k^T, streamed over blocks of q rows. (G, n)."""
    out = torch.empty(q.shape[:2], dtype=q.dtype, device=q.device)
    for start in range(0, q.shape[1], chunk):
        block = q[:, start : start + chunk] @ k.transpose(1, 2)
        out[:, start : start + chunk] = torch.logsumexp(block, dim=-1)
    return out


def match_flows(
    q_gen: torch.Tensor,
    k_gen: torch.Tensor,
    q_ref: torch.Tensor,
    k_ref: torch.Tensor,
    frames: int,
    per_frame: bool = True,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional argmax flows from RoPE-free features of one generation and one reference sample.

    :param q_gen, k_gen, q_ref, k_ref: (heads, N, head_dim) video-token features, N = frames x h x w.
    :param frames: number of token frames (groups for per-frame matching).
    :return: (flow_gen_to_ref, flow_ref_to_gen), each (N,) long: global token indices of the other branch.
    """
    heads, tokens, head_dim = q_gen.shape
    if q_ref.shape != q_gen.shape or k_ref.shape != k_gen.shape:
        raise ValueError(f"Expected equal gen/ref shapes, but got {tuple(q_gen.shape)} and {tuple(q_ref.shape)}.")
    if tokens % frames:
        raise ValueError(f"Expected tokens divisible by frames, but got {tokens} tokens and {frames} frames.")
    qg = _scale(_grouped(q_gen, frames, per_frame), heads, head_dim)
    qr = _scale(_grouped(q_ref, frames, per_frame), heads, head_dim)
    kg, kr = _grouped(k_gen, frames, per_frame), _grouped(k_ref, frames, per_frame)
    groups, n, _ = qg.shape

    lse_gen = _row_logsumexp(qg, kr, chunk)  # (G, n) rows of L
    lse_ref = _row_logsumexp(qr, kg, chunk)  # (G, n) rows of L'

    flow_g2r = torch.empty(groups, n, dtype=torch.long, device=qg.device)
    col_best = torch.full((groups, n), -1.0, dtype=qg.dtype, device=qg.device)
    flow_r2g = torch.zeros(groups, n, dtype=torch.long, device=qg.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        forward = torch.exp(qg[:, start:stop] @ kr.transpose(1, 2) - lse_gen[:, start:stop, None])
        backward = torch.exp(qr @ kg[:, start:stop].transpose(1, 2) - lse_ref[:, :, None]).transpose(1, 2)
        sym = 0.5 * (forward + backward)  # (G, c, n): rows = gen tokens start..stop
        flow_g2r[:, start:stop] = sym.argmax(dim=-1)
        block_best, block_arg = sym.max(dim=1)
        better = block_best > col_best
        col_best = torch.where(better, block_best, col_best)
        flow_r2g = torch.where(better, block_arg + start, flow_r2g)

    offsets = (torch.arange(groups, device=qg.device) * n)[:, None]
    return (flow_g2r + offsets).reshape(-1), (flow_r2g + offsets).reshape(-1)


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


class Matcher(Protocol):
    """How generation tokens find their reference tokens (made by the `make_matcher` hook).

    The session calls `features` on the match layer's attention call of each branch (at step t-1)
    and `match` once per warp step t with what it returned for both branches.
    """

    name: str

    def features(self, call: AttentionCall, sample: int) -> Any:
        """What to keep of `call` for batch row `sample` (copy it: the call's buffers are reused)."""

    def match(self, gen: Any, ref: Any, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow_gen_to_ref, flow_ref_to_gen): (N,) long global token indices of the other branch."""


class RopeFreeMatcher:
    """The paper's matcher (4.2-4.3): RoPE-free query/key of the match layer, eq. 3-4, streamed."""

    name = "rope_free"
    rotated = False

    def __init__(self, config: WarpConfig) -> None:
        self.per_frame = config.per_frame_matching
        self.chunk = config.match_chunk

    def features(self, call: AttentionCall, sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = call.query[sample : sample + 1, :, call.video]  # (1, H, N, d)
        k = call.key[sample : sample + 1, :, call.video]
        if self.rotated:
            q, k = call.rope(q), call.rope(k)
        return q[0].clone(), k[0].clone()

    def match(
        self, gen: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor], grid: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return match_flows(*gen, *ref, frames=grid[0], per_frame=self.per_frame, chunk=self.chunk)


class RotatedMatcher(RopeFreeMatcher):
    """Post-RoPE query/key (the paper's figure 4-5 ablation: positions pull matches to the same place)."""

    name = "rope"
    rotated = True


BUILTIN_MATCHERS: dict[str, type] = {cls.name: cls for cls in (RopeFreeMatcher, RotatedMatcher)}


@hookimpl
def make_matcher(name: str, config: WarpConfig) -> Matcher | None:
    cls = BUILTIN_MATCHERS.get(name)
    return None if cls is None else cls(config)


@hookimpl
def matcher_names() -> list[str]:
    return sorted(BUILTIN_MATCHERS)
