"""The procedural world (no model): deterministic, exact ground truth, an exact stand-in VAE, honest scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vwarper_hooks.world.components import PixelShuffleVAE, to_latents
from vwarper_hooks.world.correspondence import GRID, make_pair
from vwarper_hooks.world.scene import PIX, TOKEN, WORDS, background_color, random_clip, random_object, with_object
from vwarper_hooks.world.scores import score_video


def test_clips_are_deterministic_by_seed_and_captions_use_the_grammar_only():
    a, b = random_clip(np.random.default_rng(3)), random_clip(np.random.default_rng(3))
    assert a.caption == b.caption and np.array_equal(a.render()[0], b.render()[0])
    for seed in range(50):
        clip = random_clip(np.random.default_rng(seed))
        assert set(clip.caption.split()) <= set(WORDS)
        detail = " ".join(f"{x:.2f}" for x in clip.objects[0].detail_color)
        assert detail not in clip.caption  # the identity detail is never named


def test_masks_follow_the_known_motion():
    rng = np.random.default_rng(7)
    clip = random_clip(rng, objects=(random_object(rng),), direction="right")
    _, masks = clip.render()
    velocity = clip.centers[0][1] - clip.centers[0][0]
    assert velocity[0] > 0 and velocity[1] == 0
    shifted = np.roll(masks[0, 0], int(velocity[0]), axis=1)
    inside = slice(int(velocity[0]), PIX - int(velocity[0]))  # away from the borders the roll wraps
    assert np.array_equal(shifted[:, inside], masks[1, 0][:, inside])


def test_token_correspondences_land_on_the_same_object_point():
    rng = np.random.default_rng(11)
    for _ in range(10):
        ref, gen, truth = make_pair(rng, same_background=True)
        ref_video, gen_video = ref.render()[0], gen.render()[0]
        for token, (row, col) in zip(truth.tokens, truth.target, strict=True):
            frame, local = divmod(int(token), GRID * GRID)
            if abs(row - round(row)) > 1e-6 or abs(col - round(col)) > 1e-6:
                continue  # a target between tokens: compare pixels below
            g = gen_video[frame, (local // GRID) * TOKEN + 2, (local % GRID) * TOKEN + 2]
            r = ref_video[frame, int(round(row)) * TOKEN + 2, int(round(col)) * TOKEN + 2]
            assert np.allclose(g, r, atol=1e-6)


def test_the_stand_in_vae_is_exact_at_the_kept_frames_and_matches_training_latents():
    vae = PixelShuffleVAE()
    video = torch.rand(1, 3, 9, PIX, PIX) * 2 - 1
    latents = vae.encode(video).latent_dist.mode()
    assert latents.shape == (1, 12, 3, 16, 16)
    decoded = vae.decode(latents).sample
    assert decoded.shape == video.shape
    assert torch.equal(decoded[:, :, ::4], video[:, :, ::4])
    frames = (video[0, :, ::4].permute(1, 2, 3, 0) + 1) / 2  # (3, H, W, 3) in [0, 1]
    assert torch.allclose(to_latents(frames[None]), latents.permute(0, 2, 1, 3, 4), atol=1e-6)


def test_scores_see_the_detail_colour_and_its_leakage():
    rng = np.random.default_rng(5)
    obj = random_object(rng, color="red")
    clip = random_clip(rng, objects=(obj,), background="blue")
    video = clip.render()[0]
    own = score_video(video, obj, "blue")
    assert own.found == 1.0 and own.identity > 0.1 and own.leakage == 0.0 and own.detail_error < 0.2
    other = with_object(clip, random_object(np.random.default_rng(99), color="red"))
    if np.linalg.norm(np.subtract(other.objects[0].detail_color, obj.detail_color)) > 0.6:
        assert score_video(other.render()[0], obj, "blue").identity < 0.5 * own.identity
    leaked = video.copy()
    leaked[:, :4, :4] = obj.detail_color  # a patch of the detail colour far from the object
    assert score_video(leaked, obj, "blue").leakage > 0
    blank = np.broadcast_to(background_color("blue"), video.shape).copy()
    assert score_video(blank, obj, "blue").found == 0.0


@pytest.mark.parametrize("frames", [1, 3])
def test_training_batches_have_the_transformer_layout(frames):
    from vwarper_hooks.world.train import batch

    x, captions = batch(np.random.default_rng(0), 4, frames)
    assert x.shape == (4, frames, 12, 16, 16) and len(captions) == 4
    assert x.min() >= -1 and x.max() <= 1


def test_training_saves_resumes_exports_and_restarts_from_exported_weights(tmp_path):
    """A smoke run of the command (seconds, not training): state, resume, export, start from the export."""
    import json

    from vwarper_hooks.world import learned_pipeline
    from vwarper_hooks.world.train import main

    state, export = tmp_path / "state", tmp_path / "model"
    main(["--state", str(state), "--minutes", "0.01", "--init", "", "--batch", "2"])
    first = json.loads((state / "counters.json").read_text())["step"]
    main(["--state", str(state), "--minutes", "0.01", "--init", "", "--batch", "2"])
    assert json.loads((state / "counters.json").read_text())["step"] > first >= 1
    main(["--state", str(state), "--export", str(export), "--batch", "2"])
    card = json.loads((export / "training.json").read_text())
    assert card["step"] > first and (export / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert learned_pipeline(export).transformer.config.num_layers == 12
    fresh = tmp_path / "fresh"  # a lost state: start from the exported weights
    main(["--state", str(fresh), "--minutes", "0.01", "--init", str(export), "--batch", "2"])
    assert json.loads((fresh / "counters.json").read_text())["step"] > card["step"]
