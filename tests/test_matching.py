"""Streamed matching equals the dense definition; RoPE-free Q/K recover a known warp."""

from __future__ import annotations

import pytest
import torch
from vwarper_adapters.cogvideox import CogVideoXAdapter

from vwarper_hooks.contract import AttentionCall
from vwarper_hooks.fine.cycle import cycle_error, cycle_mask
from vwarper_hooks.fine.matching import match_flows, pck
from vwarper_hooks.testing import tie_query_key, tiny_cogvideox_transformer


def dense_map(q_gen, k_gen, q_ref, k_ref, rows, head_combine):
    """C_hat of eq. 3-4 for one group of tokens, with full matrices, head by head."""
    heads, _, dim = q_gen.shape
    logits = torch.stack([q_gen[h, rows] @ k_ref[h, rows].T for h in range(heads)]) / dim**0.5  # (H, n, n)
    logits_rev = torch.stack([q_ref[h, rows] @ k_gen[h, rows].T for h in range(heads)]) / dim**0.5
    if head_combine == "logits":  # mean logits, one softmax
        forward, backward = logits.mean(0).softmax(dim=1), logits_rev.mean(0).softmax(dim=1)
    else:  # DiffTrack: softmax per head, probabilities averaged
        forward, backward = logits.softmax(dim=2).mean(0), logits_rev.softmax(dim=2).mean(0)
    return (forward + backward.T) / 2  # C_gen->ref + C_ref->gen^T


def dense_flows(q_gen, k_gen, q_ref, k_ref, frames, per_frame, head_combine="probs"):
    """Eq. 3-4 written out with full matrices, head by head (independent of the streamed code)."""
    tokens = q_gen.shape[1]
    groups = frames if per_frame else 1
    n = tokens // groups
    g2r, r2g = [], []
    for g in range(groups):
        c_hat = dense_map(q_gen, k_gen, q_ref, k_ref, slice(g * n, (g + 1) * n), head_combine)
        g2r.append(c_hat.argmax(dim=1) + g * n)
        r2g.append(c_hat.argmax(dim=0) + g * n)
    return torch.cat(g2r), torch.cat(r2g)


@pytest.mark.parametrize("head_combine", ["probs", "logits"])
@pytest.mark.parametrize("per_frame", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 16, 48, 1000])
def test_chunked_matcher_equals_dense(per_frame, chunk, head_combine):
    g = torch.Generator().manual_seed(chunk)
    frames, n = 3, 16
    q_gen, k_gen, q_ref, k_ref = (torch.randn(2, frames * n, 8, generator=g, dtype=torch.float64) for _ in range(4))
    streamed = match_flows(q_gen, k_gen, q_ref, k_ref, frames=frames, per_frame=per_frame, chunk=chunk,
                           head_combine=head_combine)
    dense = dense_flows(q_gen, k_gen, q_ref, k_ref, frames=frames, per_frame=per_frame, head_combine=head_combine)
    assert torch.equal(streamed[0], dense[0]) and torch.equal(streamed[1], dense[1])
    if per_frame:  # flows stay inside the frame they start in
        assert torch.equal(streamed[0] // n, torch.arange(frames * n) // n)
    else:  # global matching does cross frames for random features
        assert not torch.equal(streamed[0] // n, torch.arange(frames * n) // n)


def test_the_two_head_readings_disagree_where_heads_disagree():
    """8 heads of random features (as eq. 3 sees at init): per-head probabilities and mean logits pick
    different matches for many tokens, so the tests above really tell the readings apart."""
    g = torch.Generator().manual_seed(0)
    q_gen, k_gen, q_ref, k_ref = (torch.randn(8, 64, 16, generator=g, dtype=torch.float64) for _ in range(4))
    probs = match_flows(q_gen, k_gen, q_ref, k_ref, frames=1, head_combine="probs")[0]
    logits = match_flows(q_gen, k_gen, q_ref, k_ref, frames=1, head_combine="logits")[0]
    assert (probs != logits).float().mean() > 0.3
    assert torch.equal(probs, dense_flows(q_gen, k_gen, q_ref, k_ref, 1, False, "probs")[0])
    assert torch.equal(logits, dense_flows(q_gen, k_gen, q_ref, k_ref, 1, False, "logits")[0])


def test_match_score_is_the_mean_of_the_symmetric_maps_row_maxima():
    g = torch.Generator().manual_seed(1)
    q_gen, k_gen, q_ref, k_ref = (torch.randn(2, 32, 8, generator=g, dtype=torch.float64) for _ in range(4))
    *_, best = match_flows(q_gen, k_gen, q_ref, k_ref, frames=2, chunk=5, with_best=True)
    score = best.mean()
    dense = torch.cat([dense_map(q_gen, k_gen, q_ref, k_ref, slice(i * 16, (i + 1) * 16), "probs").max(1).values
                       for i in range(2)])
    assert torch.allclose(score, dense.mean().float())


def test_identical_branches_give_identity_flow_and_full_cycle_mask():
    g = torch.Generator().manual_seed(0)
    grid = (2, 4, 5)
    q = torch.randn(2, 40, 16, generator=g)
    flow, back = match_flows(q, q, q, q, frames=2, chunk=6)
    assert torch.equal(flow, torch.arange(40)) and torch.equal(back, torch.arange(40))
    assert cycle_mask(flow, back, grid, torch.ones(40, dtype=torch.bool), tau_cc=0.1).all()


def test_cycle_error_and_threshold():
    grid = (1, 2, 3)
    flow = torch.tensor([0, 1, 2, 3, 4, 5])
    back = torch.tensor([0, 1, 2, 3, 4, 0])  # token 5 (row 1, col 2) returns to (0, 0)
    err = cycle_error(flow, back, grid)
    assert torch.allclose(err, torch.tensor([0, 0, 0, 0, 0, 5**0.5]))
    fg = torch.tensor([1, 1, 1, 1, 1, 1], dtype=torch.bool)
    # threshold = tau * H * fg ratio = 1.5 * 2 * 1 = 3 > sqrt(5)
    assert cycle_mask(flow, back, grid, fg, tau_cc=1.5).all()
    assert cycle_mask(flow, back, grid, fg, tau_cc=1.0).tolist() == [True] * 5 + [False]


class Features:
    """Router that keeps RoPE-free and post-RoPE Q/K of every layer (video tokens)."""

    def __init__(self) -> None:
        self.free: dict[int, tuple] = {}
        self.rotated: dict[int, tuple] = {}

    def wants(self, layer: int) -> bool:
        return True

    def process(self, call: AttentionCall) -> torch.Tensor:
        self.free[call.layer] = (call.query[:, :, call.video].clone(), call.key[:, :, call.video].clone())
        out = call.default()
        self.rotated[call.layer] = (call.query[:, :, call.video].clone(), call.key[:, :, call.video].clone())
        return out


def test_rope_free_matching_recovers_a_known_shift_and_beats_raw_qk():
    """Paper fig. 4/5, mechanically: a generation latent that is a shifted copy of the reference."""
    transformer = tiny_cogvideox_transformer(num_layers=6, sample_height=16, sample_width=16)
    tie_query_key(transformer)
    g = torch.Generator().manual_seed(0)
    frames, h, w, shift = 2, 8, 8, 2  # token grid; latent is twice as large (patch 2)
    ref = torch.randn(1, frames, 4, 2 * h, 2 * w, generator=g)
    gen = torch.roll(ref, shifts=2 * shift, dims=-1)  # content moves right by `shift` tokens
    text = torch.randn(1, 16, 32, generator=g).expand(2, -1, -1)
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    rope = get_3d_rotary_pos_embed(16, ((0, 0), (h, w)), (h, w), frames)
    router = Features()
    uninstall = CogVideoXAdapter().install(transformer, router)
    with torch.no_grad():
        transformer(
            hidden_states=torch.cat([ref, gen]),
            encoder_hidden_states=text,
            timestep=torch.tensor([500, 500]),
            image_rotary_emb=rope,
        )
    uninstall()

    grid = (frames, h, w)
    idx = torch.arange(frames * h * w)
    col = idx % w
    target = idx - shift  # same frame and row, `shift` columns to the left
    interior = col >= shift
    for layer in range(3):
        scores = {}
        for name, feats in (("free", router.free[layer]), ("rotated", router.rotated[layer])):
            q, k = feats
            flow, _ = match_flows(q[1], k[1], q[0], k[0], frames=frames, chunk=37)
            scores[name] = pck(flow, target, grid, alpha=0.05, valid=interior)
        print(f"layer {layer}: PCK RoPE-free {scores['free']:.2f}, post-RoPE {scores['rotated']:.2f}")
        assert scores["free"] >= 0.9
        assert scores["free"] > scores["rotated"]


def test_foreground_score_ignores_masked_padding_keys():
    from vwarper_hooks.fine.foreground import ForegroundAccumulator

    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 6, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    padded = torch.cat([key, 50 * query[:, :1].expand(2, 3, 8)], dim=1)  # 3 padding keys with huge logits
    valid = torch.tensor([True] * 5 + [False] * 3)
    subject = torch.tensor([1, 2])

    real, masked, unmasked = ForegroundAccumulator(), ForegroundAccumulator(), ForegroundAccumulator()
    real.add(query, key, subject)
    masked.add(query, padded, subject, valid)
    unmasked.add(query, padded, subject)
    assert torch.allclose(masked.total, real.total, atol=1e-6)  # padding gets no share of the softmax
    assert not torch.allclose(unmasked.total, real.total, atol=1e-3)  # ...which it would steal otherwise
