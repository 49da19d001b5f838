"""Beyond the paper: several subjects in one video, and several reference photos per subject."""

from __future__ import annotations

import pytest
import torch
from conftest import run
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.config import WarpConfig
from vwarper_hooks.contract.plan import StepPlan
from vwarper_hooks.fine.capture import RunState, SubjectRun
from vwarper_hooks.fine.matching import RopeFreeMatcher
from vwarper_hooks.fine.token_map import map_tokens
from vwarper_hooks.fine.warping import ValueWarp
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "images"


def _features(g, n=8, heads=2, dim=8):
    return torch.randn(heads, n, dim, generator=g), torch.randn(heads, n, dim, generator=g)


def _subject_run(score: torch.Tensor, refs: list) -> SubjectRun:
    run = SubjectRun(positions=slice(0, 1), ref_match=refs)
    run.foreground.total, run.foreground.count = score.clone(), 1
    return run


def test_each_region_reads_only_its_own_subjects_reference():
    """Disjoint foreground regions: tokens 0-3 belong to subject A, 4-7 to subject B; token 3 is in both
    masks, and B's score there is higher, so B wins it."""
    g = torch.Generator().manual_seed(0)
    config = WarpConfig(tau_fg=0.3, tau_cc=100.0)  # a loose cycle threshold keeps every foreground token
    plan = StepPlan.build(config, 4, 8)
    gen = _features(g)
    a = _subject_run(torch.tensor([1.0, 0.9, 0.8, 0.7, 0.0, 0.0, 0.1, 0.0]), [_features(g)])
    b = _subject_run(torch.tensor([0.0, 0.1, 0.0, 0.9, 1.0, 0.8, 0.9, 0.7]), [_features(g), _features(g)])
    run = RunState(config, plan, RopeFreeMatcher(config), ValueWarp(), [a, b], gen_match=gen)
    warp, (da, db) = map_tokens(run, 1, (1, 2, 4))
    reads_a = warp.flow[da.mask]
    reads_b = warp.flow[db.mask]
    assert da.mask.nonzero().flatten().tolist() == [0, 1, 2]  # token 3 went to B (higher score)
    assert db.mask.nonzero().flatten().tolist() == [3, 4, 5, 6, 7]
    assert (reads_a < 8).all()  # A's one photo: the union's first 8 tokens
    assert ((reads_b >= 8) & (reads_b < 8 + 16)).all()  # B's two photos follow
    assert torch.equal(warp.mask, da.mask | db.mask) and not (da.mask & db.mask).any()
    assert db.reference is not None and set(db.reference.tolist()) <= {0, 1}


def test_a_shifted_reference_is_recovered_among_several():
    """Photo 1 is the generation's content shifted by one token: every token reads photo 1, at the shift."""
    g = torch.Generator().manual_seed(1)
    config = WarpConfig()
    frames, h, w = 1, 4, 4
    base = torch.randn(2, frames * h * w, 16, generator=g)
    grid = base.reshape(2, h, w, 16)
    shifted = torch.roll(grid, shifts=1, dims=2).reshape(2, h * w, 16)  # the generation sees it one column on
    other = (torch.randn(2, h * w, 16, generator=g), torch.randn(2, h * w, 16, generator=g))
    flow, back, reference = RopeFreeMatcher(config).match((shifted, shifted), [other, (base, base)], (frames, h, w))
    assert (reference == 1).float().mean() > 0.9
    cols = torch.arange(h * w) % w
    rows = torch.arange(h * w) // w
    want = 16 + rows * w + (cols - 1) % w  # photo 1's tokens start at 16
    assert (flow == want).float().mean() > 0.9
    assert back.numel() == 2 * h * w


def test_identical_references_change_nothing(pipe, clock_image):
    one = vwarper.Subject.from_images([clock_image], "<clock>", "clock")
    three = vwarper.Subject.from_images([clock_image] * 3, "<clock>", "clock")
    with vwarper.inject(pipe, one, WarpConfig(warp_steps=(1, 3))):
        single = run(pipe, num_inference_steps=4)
    with vwarper.inject(pipe, three, WarpConfig(warp_steps=(1, 3), num_references=None)) as session:
        several = run(pipe, num_inference_steps=4)
    assert torch.allclose(single, several, atol=1e-5)
    assert all(int(d.reference.max()) == 0 for d in session.diagnostics.values())  # ties read the first


def _trained(pipe, image, token, seed):
    coarse = vwarper.CoarseConfig(steps=1, rank=2, mixed_precision="no", gradient_checkpointing=False,
                                  height=32, width=32, seed=seed)
    return vwarper.train_subject(pipe, [image] * 3, token=token, class_word="toy", config=coarse, progress=False)


@pytest.fixture(scope="module")
def two():
    pipe = tiny_cogvideox_pipeline(num_layers=6)
    clock = Image.open(DATA / "clock" / "00.jpg").convert("RGB")
    dog = Image.open(DATA / "dog" / "00.jpg").convert("RGB")
    return pipe, _trained(pipe, clock, "<vw-a>", 0), _trained(pipe, dog, "<vw-b>", 1)


CONFIG = WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 3))
PROMPT = "a <vw-a> toy and a <vw-b> toy on the beach"


def test_two_subjects_inject_and_leave_the_pipe_as_it_was(two):
    pipe, a, b = two
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    tokenizer, embedding = pipe.tokenizer, pipe.text_encoder.get_input_embeddings()
    stock = pipe(**tiny_call_kwargs(num_inference_steps=4)).frames
    with vwarper.inject(pipe, [a, b], CONFIG) as session:
        assert len(pipe.transformer.peft_config) == 2 and len(pipe.tokenizer) == len(tokenizer) + 2
        out = pipe(**tiny_call_kwargs(num_inference_steps=4, prompt=PROMPT)).frames
    assert torch.isfinite(out).all()
    steps = session.diagnostics
    assert sorted(steps) == [1, 2, 3] and set(steps[2]) == {"<vw-a>", "<vw-b>"}
    assert not (steps[2]["<vw-a>"].mask & steps[2]["<vw-b>"].mask).any()  # a token from one subject at most
    after = pipe.transformer.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert pipe.tokenizer is tokenizer and pipe.text_encoder.get_input_embeddings() is embedding
    assert not getattr(pipe.transformer, "peft_config", None)
    assert torch.equal(pipe(**tiny_call_kwargs(num_inference_steps=4)).frames, stock)


def test_a_missing_or_repeated_token_is_refused(two):
    pipe, a, b = two
    with pytest.raises(vwarper.SubjectTokenError, match="<vw-b>"):
        with vwarper.inject(pipe, [a, b], CONFIG):
            pipe(**tiny_call_kwargs(num_inference_steps=4, prompt="a <vw-a> toy on the beach"))
    with pytest.raises(vwarper.ConfigError, match="more than once"):
        vwarper.inject(pipe, [a, a], CONFIG).__enter__()
    with pytest.raises(vwarper.ConfigError, match="value_warp"):
        vwarper.inject(pipe, [a, b], CONFIG.updated(injector="kv_replace")).__enter__()


def test_lora_scale_tempers_a_subjects_lora(two):
    pipe, a, _ = two
    outs = {}
    for scale in (1.0, 0.0):
        a.lora_scale = scale
        with vwarper.inject(pipe, a, WarpConfig(warp=False)):
            outs[scale] = pipe(**tiny_call_kwargs(num_inference_steps=2, prompt="a <vw-a> toy")).frames
    a.lora_scale = 1.0
    token_only = vwarper.Subject(a.token, a.class_word, a.images, token_embedding=a.token_embedding)
    with vwarper.inject(pipe, token_only, WarpConfig(warp=False)):
        no_lora = pipe(**tiny_call_kwargs(num_inference_steps=2, prompt="a <vw-a> toy")).frames
    assert torch.allclose(outs[0.0], no_lora, atol=1e-6) and not torch.allclose(outs[1.0], no_lora, atol=1e-4)


def test_a_second_call_with_more_photos_than_the_cache_holds_inverts_nothing(pipe, clock_image):
    photos = [clock_image.rotate(10 * i) for i in range(6)]  # six different photos, six inversions
    subject = vwarper.Subject.from_images(photos, "<clock>", "clock")
    assert vwarper.reference_cache(subject).max_entries < 6
    config = WarpConfig(warp_steps=(1, 2), num_references=None)
    for _ in range(2):
        with vwarper.inject(pipe, subject, config):
            run(pipe, num_inference_steps=3)
    assert vwarper.reference_cache(subject).misses == 6 and vwarper.reference_cache(subject).hits == 6
