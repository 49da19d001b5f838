"""Foreground score (paper appendix A): where the subject is, from its token's attention.

"The softmax-normalized attention between the subject text token and all video tokens in the
video-text attention blocks", for every video query (post-RoPE) of the conditional sample: the
probability mass on the subject token(s), averaged over heads, accumulated over the configured
layers and the steps so far, min-max normalised over all video tokens and thresholded at tau_fg.
Two readings of "softmax-normalized" (`WarpConfig.fg_softmax`):

- ``"joint"`` (default; Seg4Diff's, the paper's reference [19], same lab): the model's own attention
  probabilities, a softmax over all keys of the joint attention, read at the subject columns.
  `add_joint` takes each query's log-sum-exp from the attention kernel the layer runs anyway, so
  only the subject columns' logits are extra: O(N x k) per layer.
- ``"text"``: a softmax over the text keys only (the video->text block on its own): `add`, O(N x T).

Where text sits in a separate cross-attention (Wan), the model's own softmax is over text keys:
the two readings coincide there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

_FG_CHUNK = 4096


class ForegroundAccumulator:
    """Running mean of video->subject-token attention over layers and steps."""

    def __init__(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0
        #: under context parallelism: this rank's scores -> every rank's (`TokenShards`): (N/P,) -> (N,) where the
        #: text attention holds this rank's tokens, (N,) mean over this rank's heads -> over every head
        self.gather = gather

    def reset(self) -> None:
        self.total, self.count = None, 0

    @torch.no_grad()
    def add(
        self,
        query_video: torch.Tensor,
        key_text: torch.Tensor,
        subject_positions: slice | torch.Tensor,
        key_valid: torch.Tensor | None = None,
    ) -> None:
        """Add one layer's scores.

        :param query_video: (heads, N, d) post-RoPE video queries of the conditional sample.
        :param key_text: (heads, T, d) text keys of the same sample.
        :param subject_positions: where the subject token's ids sit in the text (a slice, or (k,) long).
        :param key_valid: (T,) bool, False for padding the model masks out of its attention; those
            keys then get no share of the softmax either. None: all keys count.
        """
        scale = 1.0 / math.sqrt(query_video.shape[-1])
        bias = None if key_valid is None else torch.zeros(key_valid.shape, device=key_text.device).masked_fill(
            ~key_valid.to(key_text.device), float("-inf")
        )
        scores = torch.empty(query_video.shape[1], dtype=torch.float32, device=query_video.device)
        for start in range(0, query_video.shape[1], _FG_CHUNK):
            block = query_video[:, start : start + _FG_CHUNK] @ key_text.transpose(-1, -2) * scale
            block = block.float() if bias is None else block.float() + bias
            probs = block.softmax(dim=-1)[..., subject_positions].sum(-1)  # (heads, c)
            scores[start : start + _FG_CHUNK] = probs.mean(0)
        self._accumulate(scores)

    @torch.no_grad()
    def add_joint(self, query_video: torch.Tensor, key_subject: torch.Tensor, lse: torch.Tensor) -> None:
        """Add one layer's scores under the model's own (joint) softmax.

        :param query_video: (heads, N, d) post-RoPE video queries of the conditional sample.
        :param key_subject: (heads, k, d) the subject token's keys, as the attention sees them.
        :param lse: (heads, N) each video query's log-sum-exp over every key of the attention.
        """
        scale = 1.0 / math.sqrt(query_video.shape[-1])
        scores = torch.empty(query_video.shape[1], dtype=torch.float32, device=query_video.device)
        for start in range(0, query_video.shape[1], _FG_CHUNK):
            logits = (query_video[:, start : start + _FG_CHUNK] @ key_subject.transpose(-1, -2)).float() * scale
            probs = torch.exp(logits - lse[:, start : start + _FG_CHUNK, None].float()).sum(-1)  # (heads, c)
            scores[start : start + _FG_CHUNK] = probs.mean(0)
        self._accumulate(scores)

    def _accumulate(self, scores: torch.Tensor) -> None:
        self.total = scores if self.total is None else self.total + scores
        self.count += 1

    def normalised(self) -> torch.Tensor | None:
        """Min-max normalised mean score per video token, or None before the first `add`."""
        if self.total is None:
            return None
        mean = self.total / self.count
        if self.gather is not None:
            mean = self.gather(mean)  # (N,) from every rank's tokens
        lo, hi = mean.min(), mean.max()
        return (mean - lo) / (hi - lo).clamp_min(1e-12)

    def mask(self, tau_fg: float) -> torch.Tensor | None:
        scores = self.normalised()
        return None if scores is None else scores > tau_fg
