"""Reliability round 3 (issue 19, items 2-5): one validation path for `inject` and `override`, the image
inputs people pass in Python, one pipeline call at a time, and stable photo choice among identical photos."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import DATA, run
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks import guard
from vwarper_hooks.fine.matching import RopeFreeMatcher, union_flows
from vwarper_hooks.images import load_images
from vwarper_hooks.subject import activate

SMALL = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2))


# ----------------------------------------------------------------- item 2: one validation path
def test_override_runs_the_checks_inject_runs(pipe, clock_image):
    a = vwarper.Subject.from_images([clock_image] * 2, "<clock>", "clock")
    b = vwarper.Subject.from_images([clock_image], "<dog>", "dog")
    with vwarper.inject(pipe, [a, b], SMALL) as session:
        with pytest.raises(vwarper.ConfigError, match="injector='value_warp' with several subjects"):
            session.override(injector="kv_replace").__enter__()
        with pytest.raises(vwarper.ConfigError, match="reference_image below 2"):
            session.override(reference_image=2).__enter__()
        assert session.config.injector == "value_warp" and session.config.reference_image == 0


def test_a_photo_window_past_the_last_photo_is_refused_before_anything_runs(pipe, clock_image):
    three = vwarper.Subject.from_images([clock_image] * 3, "<clock>", "clock")
    with pytest.raises(vwarper.ConfigError, match=r"at most 1 photos from reference_image=2 on .* num_references=3"):
        vwarper.inject(pipe, three, SMALL.updated(reference_image=2, num_references=3)).__enter__()
    assert not guard.is_active(pipe)
    with vwarper.inject(pipe, three, SMALL.updated(num_references=5)) as session:  # from photo 0: all three
        with pytest.raises(vwarper.ConfigError, match="reference_image=1 on"):
            session.override(reference_image=1).__enter__()


def test_a_subjects_fit_is_checked_once_per_inject(pipe, clock_image, monkeypatch):
    embedding = pipe.text_encoder.get_input_embeddings().weight[0].detach().clone()
    subject = vwarper.Subject("<clock-vw>", "clock", [clock_image], token_embedding=embedding)
    calls = []

    def counting(pipe, subject):
        calls.append(subject.token)
        return original(pipe, subject)

    original = activate.fit_problems
    monkeypatch.setattr(activate, "fit_problems", counting)  # inject's check and activation both read it here
    with vwarper.inject(pipe, subject, SMALL):
        pass
    assert calls == ["<clock-vw>"]


# ----------------------------------------------------------------- item 3: inputs people pass in Python
def test_numpy_arrays_and_tensors_are_read_like_pil_images(clock_image):
    rgb = np.array(clock_image)  # (H, W, 3) uint8
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255  # diffusers' (C, H, W) in [0, 1]
    subject = vwarper.Subject.from_images(rgb, "<clock>", "clock")
    assert len(subject.images) == 1 and np.array_equal(np.asarray(subject.images[0]), rgb)
    loaded = load_images([rgb / 255.0, chw, chw[None].expand(2, -1, -1, -1), np.stack([rgb, rgb])])
    assert len(loaded) == 6 and all(np.array_equal(np.asarray(image), rgb) for image in loaded)
    cutout = np.zeros((8, 8, 4), dtype=np.uint8)  # transparent black: white, as for RGBA PIL images
    assert np.asarray(load_images(cutout)[0]).min() == 255
    with pytest.raises(vwarper.SubjectError, match=r"float pixels in \[0, 1\] .* but got values in \[-1, 1\]"):
        load_images(chw * 2 - 1)
    with pytest.raises(vwarper.SubjectError, match=r"shape \(C, H, W\) .* but got shape \(8, 8, 3\)"):
        load_images(torch.zeros(8, 8, 3))


def test_other_types_are_refused_with_one_clear_error(pipe):
    with pytest.raises(vwarper.SubjectError, match="Expected reference photos as PIL images, numpy arrays, torch "
                                                   "tensors, file paths or a folder .* but got float"):
        vwarper.train_subject(pipe, 3.5, "<toy-vw>", "toy")
    with pytest.raises(vwarper.SubjectError, match="as reference image #1, but got dict"):
        load_images([np.zeros((8, 8), np.uint8), {"path": "a.jpg"}])


def test_a_folder_is_accepted_in_the_api_as_in_the_cli(tmp_path):
    photos = sorted((DATA / "clock").glob("*.jpg"))
    for folder in (str(DATA / "clock"), DATA / "clock", [str(DATA / "clock")]):
        subject = vwarper.Subject.from_images(folder, "<clock>", "clock")
        assert len(subject.images) == len(photos)
        assert np.array_equal(np.asarray(subject.images[-1]), np.asarray(load_images(photos[-1])[0]))
    with pytest.raises(vwarper.SubjectError, match=r"Expected image files \(.jpg.*in the folder"):
        load_images(str(tmp_path))


def test_inject_takes_a_dict_as_warp_config_and_refuses_other_types_by_name(pipe, subject):
    with vwarper.inject(pipe, subject, {"match_layer": 1, "warp_layers": (2, 3), "warp_steps": (1, 2)}) as session:
        assert isinstance(session.config, vwarper.WarpConfig) and session.config.warp_steps == (1, 2)
    with pytest.raises(vwarper.ConfigError, match="warp_stepz"):
        vwarper.inject(pipe, subject, {"warp_stepz": (1, 2)}).__enter__()
    with pytest.raises(vwarper.ConfigError, match="Expected a vwarper.WarpConfig, a dict .* but got CoarseConfig"):
        vwarper.inject(pipe, subject, vwarper.CoarseConfig()).__enter__()
    assert not guard.is_active(pipe)


def test_grey_wider_than_sixteen_bits_is_scaled_by_its_actual_range():
    grey = np.zeros((16, 16), dtype=np.int32)
    grey[:, 8:] = 200_000  # a 32-bit "I" image: /257 would clip both halves to white
    grey[:8, :8] = 100_000
    image = Image.fromarray(grey)
    assert image.mode == "I"
    pixels = np.asarray(load_images(image)[0])[..., 0]
    assert pixels[12, 2] == 0 and pixels[2, 2] == 128 and pixels[2, 12] == 255


# ----------------------------------------------------------------- item 4: concurrency and reuse
def test_a_second_threads_call_is_refused_at_once_and_the_first_runs_on(pipe, subject):
    cls = type(pipe)
    with vwarper.inject(pipe, subject, SMALL):
        alone = run(pipe, num_inference_steps=4)
    inside, go, result = threading.Event(), threading.Event(), {}

    def pause(pipe, step, timestep, tensors):
        if step == 1:  # the first call waits inside its denoising loop, after a warp step
            inside.set()
            go.wait(120)
        return tensors

    def first():
        try:
            result["frames"] = run(pipe, num_inference_steps=4, callback_on_step_end=pause)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    with vwarper.inject(pipe, subject, SMALL) as session:
        worker = threading.Thread(target=first)
        worker.start()
        try:
            assert inside.wait(120)
            with pytest.raises(vwarper.VwarperError, match="one pipeline call at a time under inject"):
                run(pipe, num_inference_steps=4)
        finally:
            go.set()
            worker.join(120)
        assert "error" not in result, result.get("error")
        assert torch.equal(result["frames"], alone) and sorted(session.diagnostics) == [1, 2]
        assert torch.equal(run(pipe, num_inference_steps=4), alone)  # then the next call, from this thread
    assert type(pipe) is cls  # the pipeline's own class again


def test_one_inject_object_is_one_with_block_and_a_closed_session_refuses_override(pipe, subject):
    block = vwarper.inject(pipe, subject, SMALL)
    with block as session:
        pass
    with pytest.raises(vwarper.VwarperError, match=r"fresh inject\(...\) for each with block"):
        with block:
            pass
    with pytest.raises(vwarper.VwarperError, match="that block has ended"):
        session.override(tau_fg=0.5).__enter__()
    assert not guard.is_active(pipe)


# ----------------------------------------------------------------- item 5: identical photos, float noise
def test_a_tie_within_the_tolerance_goes_to_the_lower_photo():
    g = torch.Generator().manual_seed(0)
    best = torch.rand(96, generator=g) * 0.5 + 0.25
    flows = [(torch.arange(96), torch.arange(96), best + torch.randn(96, generator=g) * 1e-6) for _ in range(3)]
    flows[0] = (*flows[0][:2], best)
    _, _, choice = union_flows(flows)
    assert int(choice.max()) == 0  # copies 1e-6 apart: every token reads photo 0
    clearly = [(f, b, s * (1.01 if i == 2 else 1.0)) for i, (f, b, s) in enumerate(flows)]
    assert (union_flows(clearly)[2] == 2).all()  # 1 % better is no tie


def test_identical_photos_give_the_one_photo_choice_under_batch_float_noise(pipe, clock_image, monkeypatch):
    """What some machines do: identical batch rows of the reference forward come out about 1e-6 apart."""
    g = torch.Generator().manual_seed(0)
    features = RopeFreeMatcher.features

    def noisy(self, call, sample):
        q, k = features(self, call, sample)
        if call.query.shape[0] == 3 and sample:  # copies 1 and 2 of the three-photo reference batch
            q, k = (x + torch.randn(x.shape, generator=g) * 1e-6 * x.abs().mean() for x in (q, k))
        return q, k

    monkeypatch.setattr(RopeFreeMatcher, "features", noisy)
    three = vwarper.Subject.from_images([clock_image] * 3, "<clock>", "clock")
    with vwarper.inject(pipe, three, vwarper.WarpConfig(warp_steps=(1, 3), num_references=None)) as session:
        run(pipe, num_inference_steps=4)
    assert sorted(session.diagnostics) == [1, 2, 3]
    assert all(int(d.reference.max()) == 0 for d in session.diagnostics.values())
