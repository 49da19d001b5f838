"""Per-layer PCK (paper figure 4): a known warp scores 1.0, a dense matcher gives the ground truth."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from vwarper_hooks.apps.analysis import DESCRIPTORS, DinoMatcher, dense_matcher_truth, score, synthetic_shift
from vwarper_hooks.apps.cli import main
from vwarper_hooks.apps.demo import sample_images
from vwarper_hooks.apps.visualize import tile_at
from vwarper_hooks.porting.families import OTHER_FAMILIES
from vwarper_hooks.testing import tiny_cogvideox_pipeline

LAYERS = 4


@pytest.fixture(scope="module")
def pipe():
    return tiny_cogvideox_pipeline(num_layers=LAYERS, tie_qk=True)


def test_pck_of_the_exact_flow_is_one_and_of_a_wrong_flow_is_low():
    grid = (2, 8, 8)
    idx = torch.arange(128)
    sample = torch.randn(2, 128, 16, generator=torch.Generator().manual_seed(0))  # (heads, tokens, dim)
    same = torch.stack([sample, sample])  # batch [reference, generation]: the generation is the reference
    features = {d: {0: (same, same)} for d in DESCRIPTORS}
    moved = torch.stack([sample, sample.roll(1, dims=1)])  # generation token i shows reference token i - 1
    features["hidden"] = {0: (moved, moved)}
    result = score(features, idx, grid)
    assert result.curve("qk_raw") == [1.0] and result.curve("qk_ropefree") == [1.0]
    assert result.curve("hidden")[0] < 0.2  # a one-token-off flow is wrong at alpha 0.05 on 8x8


def test_known_shift_gives_pck_one_for_rope_free_qk_at_every_layer(pipe):
    result = synthetic_shift(pipe, sample_images()[0], shift=2, frames=5, size=(128, 128))
    assert result.grid == (2, 8, 8)
    assert len(result.rows) == 3 * LAYERS
    assert result.curve("qk_ropefree") == [1.0] * LAYERS
    assert result.best("qk_ropefree") == (0, 1.0)
    # figure 5 (c): the reference warped by the RoPE-free flow is the generation (where it has a source)
    picture, layer = result.warp_figure()
    generated, warped = (tile_at(picture, row, 1, (128, 128)) for row in (0, 3))
    assert layer == 0 and np.array_equal(warped[:, 2 * 16 :], generated[:, 2 * 16 :])
    assert not np.array_equal(tile_at(picture, 0, 1, (128, 128)), result.pictures["reference"])


def tiny_dino_matcher() -> DinoMatcher:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from vwarper_hooks.apps.evaluation import DinoEmbedder

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       image_size=64, patch_size=8)
    model = ViTModel(config, add_pooling_layer=False)
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    return DinoMatcher(embedder=DinoEmbedder(model=model, processor=processor))


def test_dino_matcher_gives_global_indices_per_frame():
    image = sample_images()[0].resize((64, 64))
    other = Image.fromarray(np.asarray(image)[::-1].copy())
    flow = tiny_dino_matcher()([image, other], image, (2, 4, 4))
    assert flow.shape == (32,)
    assert torch.equal(flow[:16], torch.arange(16))  # an identical frame matches itself
    assert ((flow[16:] >= 16) & (flow[16:] < 32)).all()  # frame 1 points into frame 1 of the reference


def test_pseudo_ground_truth_mode_on_a_still_video(pipe):
    """The video is the reference repeated: matcher, descriptors and ground truth all say identity."""
    reference = sample_images()[0]
    video = np.stack([np.asarray(reference.resize((128, 128)))] * 5)
    result = dense_matcher_truth(pipe, video, reference, tiny_dino_matcher())
    assert result.mode == "pseudo ground truth" and result.grid == (2, 8, 8)
    assert result.curve("qk_ropefree") == [1.0] * LAYERS


def test_analyze_command_writes_csv_and_plot(tmp_path):
    assert main(["analyze", "--model", "tiny", "--frames", "5", "--size", "64", "64", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "pck.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["descriptor"] for r in rows} == set(DESCRIPTORS) and len(rows) == 3 * 42
    assert all(0.0 <= float(r["pck"]) <= 1.0 for r in rows)
    # a synthetic shift of the reference: RoPE-free Q/K recover it at every layer of the tied tiny model
    assert [float(r["pck"]) for r in rows if r["descriptor"] == "qk_ropefree"] == [1.0] * 42
    for name in ("pck.png", "warps.png"):
        with Image.open(tmp_path / name) as png:
            assert png.format == "PNG" and png.width > 100


def test_dino_pseudo_ground_truth_sees_the_whole_frame():
    """A centre-cropping processor (DINOv2 style) must not cut the frame borders off the patch map."""
    import numpy as np
    from PIL import Image
    from transformers import BitImageProcessor

    from vwarper_hooks.apps.analysis import full_frame_kwargs

    processor = BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    frame = Image.fromarray((np.random.default_rng(0).random((32, 64, 3)) * 255).astype("uint8"))
    kept = processor(images=[frame], return_tensors="pt", **full_frame_kwargs(processor))["pixel_values"]
    whole = processor(images=[frame.resize((32, 32), Image.BICUBIC)], return_tensors="pt", do_center_crop=False,
                      do_resize=False)["pixel_values"]
    cropped = processor(images=[frame], return_tensors="pt")["pixel_values"]
    assert torch.equal(kept, whole) and not torch.equal(cropped, whole)


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_known_shift_runs_on_flow_matching_families(family):
    """The analysis asks the adapter for the forward call and the scheduler's objective for the noise."""
    from vwarper_hooks.testing import tiny_pipeline

    result = synthetic_shift(tiny_pipeline(family, tie_qk=True), sample_images()[0], shift=2, frames=5, size=(64, 64))
    assert result.grid == (2, 4, 4) and result.curve("qk_ropefree") == [1.0] * 6
