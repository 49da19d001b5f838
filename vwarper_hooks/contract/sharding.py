"""V-Warper under diffusers' context parallelism: one video's tokens split over several ranks.

diffusers splits the video tokens into contiguous chunks, rank r holding tokens [r*N/P, (r+1)*N/P) of
every head (``tensor.chunk(P, dim)[r]`` over the flattened ring x Ulysses mesh), and gathers them again
after the last block. V-Warper needs every token at once: flows are global token indices, a warped value
can come from any reference token, and the matcher compares every generation token of a frame with every
reference token. So a routed layer does what Ulysses attention does inside its kernel call, around the
whole core instead: one all-to-all turns (B, H, N/P, D) into (B, H/P, N, D), every token of H/P heads;
the core attends, matches and warps on that, and a second all-to-all brings its output back. Per head,
V-Warper is local (the warp reads the reference values of the same head, which the reference branch, run
on the same ranks with the same split, holds in the same place). Four things are not per head, and are
gathered here:

- the matcher's features: each rank gathers the Q/K of every head at the match layer (`gather_heads`),
  and every rank computes the same flows;
- the foreground score: where text has its own cross-attention (Wan), that attention keeps its local
  tokens, and the per-token scores (one float per token) are gathered before they are normalised
  (`gather_tokens`); where text joins the attention (CogVideoX), each rank scores every token with its own
  heads, and the ranks' means are averaged (`mean_over_ranks`);
- the rotary tables, where diffusers splits them by token (Wan; `gather_tokens`);
- in a joint attention, the text output of every head (text stays whole on every rank; `token_output`).

The all-to-all of a routed layer replaces the one its stock attention would have made, so the warp
layers move the same bytes as stock ones; the extra volume is the reference branch's own forwards and the
gathers above (see ``benchmarks/cost_comm.py``). Requires heads and video tokens divisible by the number of ranks.
The match features are the gather that does not shrink with the ranks (2 x N x H x D per branch and match
step); a cheaper alternative, not built: each rank sums its own heads' softmax probabilities block by block
and the ranks all-reduce those blocks (per-frame matching keeps them N x N / F), so no rank holds every head.
Text tokens are never split (diffusers' Wan plan leaves them whole; so does CogVideoX's, `adapters/cogvideox.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from .calls import AttentionCall
from .joint_attention import rotate_span


class TokenShards:
    """This rank's part of a context-parallel group: its tokens, and the collectives that gather the rest."""

    def __init__(self, group: Any, size: int, rank: int) -> None:
        #: the torch.distributed process group over which the tokens are split
        self.group = group
        #: number of ranks the tokens are split over
        self.size = size
        #: this rank's index in `group` (which chunk of tokens, and which heads after `to_heads`)
        self.rank = rank

    @classmethod
    def of_config(cls, parallel_config: Any) -> TokenShards | None:
        """The shards of diffusers' ``ParallelConfig`` (set up by ``enable_parallelism``); None without
        context parallelism."""
        cp = getattr(parallel_config, "context_parallel_config", None)
        mesh = getattr(cp, "_flattened_mesh", None)
        if mesh is None:
            return None
        return cls(mesh.get_group(), mesh.size(), mesh.get_local_rank())

    @classmethod
    def of_model(cls, model: Any) -> TokenShards | None:
        """The shards of a transformer under ``enable_parallelism``; None when it runs on one rank."""
        return cls.of_config(getattr(model, "_parallel_config", None))

    # ----------------------------------------------------------------- collectives
    def _all_to_all(self, chunks: torch.Tensor) -> torch.Tensor:
        """(P, ...) contiguous: chunk p goes to rank p; returns (P, ...), chunk p from rank p."""
        out = torch.empty_like(chunks)
        torch.distributed.all_to_all_single(out, chunks, group=self.group)
        return out

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N/P, D) local tokens of every head -> (B, H/P, N, D) every token of this rank's heads."""
        b, h, n, d = x.shape
        chunks = x.reshape(b, self.size, h // self.size, n, d).transpose(0, 1).contiguous()  # (P, B, H/P, n, D)
        got = self._all_to_all(chunks)  # (P, B, H/P, n, D): rank p's tokens of our heads
        return got.permute(1, 2, 0, 3, 4).reshape(b, h // self.size, self.size * n, d)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_heads`: (B, H/P, N, D) -> (B, H, N/P, D)."""
        b, h, n, d = x.shape
        chunks = x.reshape(b, h, self.size, n // self.size, d).permute(2, 0, 1, 3, 4).contiguous()  # (P, B, h, n, D)
        got = self._all_to_all(chunks)  # (P, B, h, n/P, D): rank p's heads of our tokens
        return got.transpose(0, 1).reshape(b, h * self.size, n // self.size, d)

    def _all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def gather_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H/P, N, D) this rank's heads -> (..., H, N, D) every head, on every rank."""
        return self._all_gather(x, dim=x.ndim - 3)

    def gather_tokens(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """This rank's tokens along `dim` -> every token, in order, on every rank."""
        return self._all_gather(x, dim=dim % x.ndim)

    def mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of `x` (each rank's mean over its own heads -> the mean over every head)."""
        total = x.clone()
        torch.distributed.all_reduce(total, group=self.group)
        return total / self.size

    # ----------------------------------------------------------------- a routed call
    def _heads(self, heads: int) -> slice:
        """This rank's heads after `to_heads`."""
        share = heads // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def head_call(self, call: AttentionCall) -> AttentionCall:
        """`call` with every token of this rank's heads: the video through `to_heads`; text tokens (a joint
        text-video attention, CogVideoX), which every rank holds whole, keep their place and this rank's heads.
        Its ``rope`` must rotate every video token (the adapter gathers split rotary tables, or diffusers
        leaves them whole), and ``rotate_`` becomes ``rope`` on the queries and keys of the video tokens."""
        text, video = call.text, call.video
        texts = text.stop - text.start
        text_first = texts > 0 and text.start < video.start
        mine = self._heads(call.query.shape[1])

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, H, T + N/P, D) -> (B, H/P, T + N, D)
            whole = self.to_heads(x[:, :, video])
            if not texts:
                return whole
            parts = [x[:, mine, text], whole]
            return torch.cat(parts if text_first else parts[::-1], dim=2)

        query, key, value = (heads(x) for x in (call.query, call.key, call.value))
        n = query.shape[2] - texts
        video = slice(texts, texts + n) if text_first else slice(0, n)
        text = slice(0, texts) if text_first else slice(n, n + texts)
        return dataclasses.replace(call, query=query, key=key, value=value, video=video, text=text,
                                   rotate_=rotate_span(call.rope, video), shards=self)

    def token_output(self, call: AttentionCall, out: torch.Tensor) -> torch.Tensor:
        """The core's output (B, H/P, T + N, D) for `call` (as `head_call` got it) back in `call`'s layout
        (B, H, T + N/P, D): the video to this rank's tokens (`to_tokens`), the text of every head gathered
        (every rank carries the whole text stream on to the next layer)."""
        text, video = call.text, call.video
        texts = text.stop - text.start
        if not texts:
            return self.to_tokens(out)
        text_first = text.start < video.start
        split = [texts, out.shape[2] - texts] if text_first else [out.shape[2] - texts, texts]
        first, second = out.split(split, dim=2)
        words, frames = (first, second) if text_first else (second, first)
        words, frames = self._all_gather(words, dim=1), self.to_tokens(frames)  # every head of the text
        return torch.cat([words, frames] if text_first else [frames, words], dim=2)

    def matching_view(self, call: AttentionCall) -> AttentionCall:
        """What a matcher reads of a head-split call: the Q/K of every head (gathered, every sample of the
        batch); the value stays this rank's heads."""
        query, key = (self.gather_heads(x) for x in (call.query, call.key))
        return dataclasses.replace(call, query=query, key=key, shards=None)


def score_gather(shards: TokenShards | None, text_outside: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How the foreground scores of the ranks combine: gathered by token where a separate text attention keeps
    this rank's tokens (Wan, `text_outside`), averaged where each rank scored every token with its own heads
    (a joint attention); None on one rank."""
    if shards is None:
        return None
    return shards.gather_tokens if text_outside else shards.mean_over_ranks


def sharding_problems(shards: TokenShards | None, heads: int | None = None, tokens: int | None = None) -> list[str]:
    """Why the split cannot be turned into whole heads: heads or video tokens not divisible by the ranks."""
    if shards is None:
        return []
    problems = []
    if heads is not None and heads % shards.size:
        problems.append(
            f"Expected attention heads divisible by the {shards.size} context-parallel ranks, but the model has "
            f"{heads}. Use a degree that divides {heads}."
        )
    if tokens is not None and tokens % shards.size:
        problems.append(
            f"Expected video tokens divisible by the {shards.size} context-parallel ranks, but this call has "
            f"{tokens}. Change num_frames, height or width (or the degree) so that they divide."
        )
    return problems
