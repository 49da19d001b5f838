"""A toy joint-attention video transformer (the architecture the example plugin adapts).

Shapes: latents (B, C, F, H, W) -> one token per latent pixel (video tokens ordered frame, row,
column); text (B, T, text_dim) -> T text tokens placed BEFORE the video tokens in every layer's
joint sequence. Each layer: LayerNorm, joint self-attention with per-head RMS QK-norm and 3D RoPE on
the video tokens only, then an MLP. Attention modules call a swappable ``processor`` object, the
way diffusers models do, which is what an adapter replaces.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (N, head_dim): a third of the pairs rotate with the frame, row and column index."""
    axes = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), dim=-1).reshape(-1, 3)
    pairs = head_dim // 2
    axis_of_pair = torch.arange(pairs) % 3
    freq = theta ** (-(torch.arange(pairs) // 3).float() / max(1, pairs // 3))
    angle = axes[:, axis_of_pair].float() * freq  # (N, pairs)
    angle = angle.repeat_interleave(2, dim=-1)
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., N, D) by (N, D) angles, pairs (2i, 2i+1)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-odd, even], dim=-1).flatten(-2)
    return x * cos + rotated * sin


class ToyAttnProcessor:
    """The stock processor: joint [text, video] attention, QK-norm, RoPE on video tokens."""

    def __call__(
        self, attn: ToyJointAttention, text: torch.Tensor, video: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_text = text.shape[1]
        joint = torch.cat([text, video], dim=1)
        q = attn.norm_q(attn.to_q(joint).unflatten(2, (attn.heads, -1))).transpose(1, 2)
        k = attn.norm_k(attn.to_k(joint).unflatten(2, (attn.heads, -1))).transpose(1, 2)
        v = attn.to_v(joint).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        q = torch.cat([q[:, :, :n_text], apply_rope(q[:, :, n_text:], *rope)], dim=2)
        k = torch.cat([k[:, :, :n_text], apply_rope(k[:, :, n_text:], *rope)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        out = attn.to_out(out)
        return out[:, :n_text], out[:, n_text:]


class ToyJointAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q = nn.RMSNorm(dim // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(dim // heads, eps=1e-6)
        self.to_out = nn.Linear(dim, dim)
        self.processor: Any = ToyAttnProcessor()

    def set_processor(self, processor: Any) -> None:
        self.processor = processor

    def forward(
        self, text: torch.Tensor, video: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.processor(self, text, video, rope)


class ToyBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = ToyJointAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, text: torch.Tensor, video: torch.Tensor, rope: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t, v = self.attn(self.norm(text), self.norm(video), rope)
        text, video = text + t, video + v
        return text + self.mlp(text), video + self.mlp(video)


class ToyJointTransformer(nn.Module):
    """Latent video (B, C, F, H, W) + text (B, T, text_dim) + timestep -> prediction of the latent's shape."""

    def __init__(self, channels: int = 4, text_dim: int = 24, dim: int = 32, heads: int = 2, layers: int = 4) -> None:
        super().__init__()
        self.channels, self.head_dim = channels, dim // heads
        self.embed_video = nn.Linear(channels, dim)
        self.embed_text = nn.Linear(text_dim, dim)
        self.embed_time = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim, heads) for _ in range(layers))
        self.out = nn.Linear(dim, channels)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        b, c, f, h, w = hidden_states.shape
        video = self.embed_video(hidden_states.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, c))
        video = video + self.embed_time(timestep.float().reshape(-1, 1) / 1000.0)[:, None]
        text = self.embed_text(encoder_hidden_states)
        rope = rope_3d((f, h, w), self.head_dim)
        for block in self.blocks:
            text, video = block(text, video, rope)
        out = self.out(video).reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)
        return {"sample": out} if return_dict else (out,)


def toy_inputs(model: ToyJointTransformer, text_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Forward kwargs of one call: 2 frames of 3 x 4 latent pixels (24 video tokens) and `text_len` text tokens."""
    g = torch.Generator().manual_seed(seed)
    text_dim = model.embed_text.in_features
    return {
        "hidden_states": torch.randn(1, model.channels, 2, 3, 4, generator=g),
        "encoder_hidden_states": torch.randn(1, text_len, text_dim, generator=g),
        "timestep": torch.tensor([500.0]),
    }
