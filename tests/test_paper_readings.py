"""The paper's ambiguous readings, each against a dense reference written here, head by head:
the joint-softmax foreground score, and the choice of reference photo."""

from __future__ import annotations

import pytest
import torch
from conftest import run
from PIL import Image
from test_matching import dense_map

import vwarper_hooks as vwarper
from vwarper_hooks.contract.processors import attend_with_lse
from vwarper_hooks.fine import session as session_module
from vwarper_hooks.fine.capture import Branch, Router
from vwarper_hooks.fine.foreground import ForegroundAccumulator
from vwarper_hooks.fine.matching import TIE_RTOL, first_best
from vwarper_hooks.testing import tiny_call_kwargs, tiny_pipeline


@pytest.mark.parametrize("masked", [False, True])
def test_attention_with_its_logsumexp_equals_the_stock_attention(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (10, 12, 12))
    keep = None
    if masked:
        keep = torch.ones(2, 1, 1, 12, dtype=torch.bool)
        keep[1, ..., -3:] = False
    out, lse = attend_with_lse(q, k, v, keep)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep), atol=1e-6)
    logits = q @ k.transpose(-1, -2) / 8**0.5
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(logits, dim=-1), atol=1e-5)


def test_joint_score_is_the_subject_columns_of_the_full_softmax():
    g = torch.Generator().manual_seed(1)
    heads, n_text, n_video, d = 2, 5, 7, 8
    q, k = torch.randn(heads, n_text + n_video, d, generator=g), torch.randn(heads, n_text + n_video, d, generator=g)
    dense = torch.stack([(q[h] @ k[h].T / d**0.5).softmax(dim=-1) for h in range(heads)])  # (H, N, N)
    subject = slice(2, 4)
    want = dense[:, n_text:, subject].sum(-1).mean(0)  # video rows, subject columns, mean over heads
    lse = torch.logsumexp(q @ k.transpose(1, 2) / d**0.5, dim=-1)
    fg = ForegroundAccumulator()
    fg.add_joint(q[:, n_text:], k[:, subject], lse[:, n_text:])
    assert torch.allclose(fg.total, want, atol=1e-6)


def _capture_layer(monkeypatch, layer: int) -> list:
    """RoPE-free q/k of `layer`'s generation calls, with the call's rope, text/video spans and text mask."""
    seen = []
    original = Router.process

    def spy(self, call):
        if self.route.branch is Branch.GENERATION and call.layer == layer and self.route.pass_index == 0:
            seen.append((call.query.clone(), call.key.clone(), call.rope, call.text, call.video, call.text_valid))
        return original(self, call)

    monkeypatch.setattr(Router, "process", spy)
    return seen


@pytest.mark.parametrize("family", ["cogvideox", "hunyuan_video"])
def test_joint_foreground_score_equals_the_dense_joint_softmax(family, monkeypatch, subject):
    pipe = tiny_pipeline(family, **({"num_layers": 6} if family == "cogvideox" else {}))
    layer = 2
    seen = _capture_layer(monkeypatch, layer)
    config = vwarper.WarpConfig(warp_steps=(1, 1), fg_layers=(layer, layer), match_layer=1, warp_layers=(3, 3))
    with vwarper.inject(pipe, subject, config) as session:
        pipe(**tiny_call_kwargs(num_inference_steps=2, max_sequence_length=24))
    q, k, rope, text, video, text_valid = seen[0]  # step 0: the only fg step before warp step 1
    cond = q.shape[0] - 1
    q, k = q[cond].clone(), k[cond].clone()  # (H, tokens, d)
    q[:, video], k[:, video] = rope(q[None, :, video])[0], rope(k[None, :, video])[0]  # as the attention sees them
    logits = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    if text_valid is not None:  # HunyuanVideo masks padded prompt tokens out of its attention
        keep = torch.ones(k.shape[1], dtype=torch.bool)
        keep[text] = text_valid[cond]
        assert not keep.all()
        logits = logits.masked_fill(~keep, float("-inf"))
    columns = slice(text.start + session.subject_positions.start, text.start + session.subject_positions.stop)
    score = logits.softmax(dim=-1)[:, video, columns].sum(-1).mean(0)
    score = (score - score.min()) / (score.max() - score.min())
    got = session.diagnostics[1].fg_score.reshape(-1).float()
    assert torch.allclose(got, score, atol=2e-3)


def test_text_and_joint_readings_give_different_masks(pipe, subject):
    scores = {}
    for reading in ("text", "joint"):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2), fg_softmax=reading)) as session:
            run(pipe, num_inference_steps=3, height=64, width=64)
        scores[reading] = session.diagnostics[2].fg_score
    assert not torch.allclose(scores["text"].float(), scores["joint"].float(), atol=1e-2)


def _two_photo_subject(clock_image):
    grey = Image.new("RGB", clock_image.size, (128, 128, 128))
    return vwarper.Subject.from_images([grey, clock_image], token="<clock>", class_word="clock")


def test_reference_image_index_picks_that_photo(pipe, clock_image):
    subject = _two_photo_subject(clock_image)
    outputs = {}
    for index in (0, 1):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2), reference_image=index)) as session:
            outputs[index] = run(pipe, num_inference_steps=3)
        assert session.reference_image == index
    assert not torch.equal(outputs[0], outputs[1])
    with pytest.raises(vwarper.ConfigError, match="below 2"):
        vwarper.inject(pipe, subject, vwarper.WarpConfig(reference_image=2)).__enter__()


def test_best_reference_photo_is_the_one_that_matches_best(pipe, clock_image, monkeypatch):
    subject = _two_photo_subject(clock_image)
    config = vwarper.WarpConfig(warp_steps=(1, 2), reference_image="best")
    with vwarper.inject(pipe, subject, config) as session:
        run(pipe, num_inference_steps=3)
    chosen, scores = session.reference_image, session.reference_scores
    assert len(scores) == 2 and chosen == int(first_best(torch.tensor(scores)))  # the max; a tie: the lower index
    assert scores[chosen] >= max(scores) * (1 - TIE_RTOL)

    # Independently: each photo on its own, its match features at the first match step scored densely.
    captured = []
    original = session_module.map_tokens

    def spy(run_state, step, grid):
        captured.append((run_state.gen_match, run_state.subjects[0].ref_match[0]))
        return original(run_state, step, grid)

    monkeypatch.setattr(session_module, "map_tokens", spy)
    dense = []
    for index in (0, 1):
        captured.clear()
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp_steps=(1, 2), reference_image=index)):
            run(pipe, num_inference_steps=3)
        (qg, kg), (qr, kr) = captured[0]  # warp step 1: features of step 0
        frames, n = 2, qg.shape[1] // 2
        rows = [dense_map(qg, kg, qr, kr, slice(f * n, (f + 1) * n), "probs").max(dim=1).values for f in range(frames)]
        dense.append(float(torch.cat(rows).mean()))
    assert chosen == int(first_best(torch.tensor(dense)))
    assert scores == pytest.approx(dense, abs=1e-5)
