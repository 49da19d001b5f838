"""The hot path reads no tensor value on the host: `inject` runs end to end on the meta device.

Meta tensors have shapes but no values, so any `.item()`, `.tolist()`, `bool(tensor)` or
device-to-host copy in the per-call path raises. Only the scheduler's arithmetic is stubbed
(stock schedulers index their tables with the timestep's value); everything else is the stock
pipeline, our hooks, the reference branch and, on the cold call, the inversion.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vwarper_hooks as vwarper
from vwarper_hooks.porting.families import OTHER_FAMILIES
from vwarper_hooks.testing import tiny_call_kwargs, tiny_pipeline


def _on_meta(family: str):
    pipe = tiny_pipeline(family, **({"num_layers": 14} if family == "cogvideox" else {}))
    pipe.to("meta")
    pipe.scheduler.step = lambda model_output, timestep, sample, *args, **kwargs: (sample,)  # arithmetic only
    return pipe


@pytest.mark.parametrize("family", ["cogvideox"])  # Wan's UMT5 encoder (transformers) itself reads values
def test_cold_and_warm_calls_run_on_the_meta_device(family):
    pipe = _on_meta(family)
    subject = vwarper.Subject.from_images([Image.new("RGB", (32, 32), (200, 80, 40))], "<clock>", "clock")
    config = vwarper.WarpConfig(warp_steps=(1, 3), match_layer=2, warp_layers=(3, 4))
    for _ in range(2):  # cold (inversion), then warm (cached trajectory)
        with vwarper.inject(pipe, subject, config) as session:
            out = pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent", generator=None))
        assert out.frames.device.type == "meta"
        warps = sum(n for (kind, _, _), n in session.calls.items() if kind == "warp")
        assert warps == 3 * 2  # 3 warp steps x 2 warp layers
    assert vwarper.reference_cache(subject).misses == 1 and vwarper.reference_cache(subject).hits == 1
    assert pipe.scheduler.step.__name__ == "<lambda>"  # our step counter is gone again
    assert torch.device("meta") == next(pipe.transformer.parameters()).device


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cost_configs import _mask_checks, meta_shims  # noqa: E402  (transformers' mask checks read values; ours do not)


def _subject(token: str, photos: int) -> vwarper.Subject:
    images = [Image.new("RGB", (32, 32), (200, 80 + 30 * i, 40)) for i in range(photos)]
    return vwarper.Subject.from_images(images, token, token.strip("<>"))


CASES = {
    "2 subjects": dict(subjects=2, photos=1, fields={}),
    "3 photos": dict(subjects=1, photos=3, fields={"num_references": 3}),
    "feature cache": dict(subjects=1, photos=1, fields={"cache_reference_features": True,
                                                        "feature_cache_device_gib": 1e6}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_several_subjects_photos_and_the_feature_cache_run_on_the_meta_device(case):
    spec = CASES[case]
    pipe = _on_meta("cogvideox")
    subjects = [_subject(t, spec["photos"]) for t in ("<clock>", "<dog>")[: spec["subjects"]]]
    prompt = "a <clock> clock and a <dog> dog on the beach" if spec["subjects"] == 2 else "a <clock> clock"
    config = vwarper.WarpConfig(warp_steps=(1, 3), match_layer=2, warp_layers=(3, 4), **spec["fields"])
    for _ in range(2):
        with vwarper.inject(pipe, subjects, config) as session:
            out = pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent", generator=None, prompt=prompt))
        assert out.frames.device.type == "meta"
        assert sum(n for (kind, _, _), n in session.calls.items() if kind == "warp") == 3 * 2


def test_the_best_photo_is_chosen_with_one_host_read_per_run():
    """``reference_image="best"`` reads the photos' scores once per run, at its first warp step: which photo's
    branch runs is Python control flow. It is the one read of the hot path; here it is where meta stops."""
    pipe = _on_meta("cogvideox")
    config = vwarper.WarpConfig(warp_steps=(1, 3), match_layer=2, warp_layers=(3, 4), reference_image="best")
    with pytest.raises(NotImplementedError) as caught, vwarper.inject(pipe, _subject("<clock>", 3), config):
        pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent", generator=None, prompt="a <clock> clock"))
    assert "choose_best" in [entry.name for entry in caught.traceback]
    assert "values = torch.stack(scores).float().cpu().tolist()" in str(caught.getrepr())


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_other_families_run_on_the_meta_device(family):
    in_masking_utils = any(getattr(o, "__name__", "") == "transformers.masking_utils" for o, _ in _mask_checks())
    if family == "hunyuan_video" and not in_masking_utils:
        pytest.skip("transformers before 4.53: its Llama text encoder cannot run on the meta device")
    if family == "wan22":
        pytest.skip("the stock two-expert WanPipeline reads each step's timestep on the host to pick its expert "
                    "(t >= boundary_timestep): it cannot run on the meta device, with or without V-Warper")
    with meta_shims():
        pipe = _on_meta(family)
        subject = _subject("<clock>", 1)
        config = vwarper.WarpConfig(warp_steps=(1, 3))
        for _ in range(2):
            with vwarper.inject(pipe, subject, config) as session:
                out = pipe(**tiny_call_kwargs(num_inference_steps=5, output_type="latent", generator=None))
            assert out.frames.device.type == "meta"
            assert any(kind == "warp" for kind, _, _ in session.calls)
    assert vwarper.reference_cache(subject).misses == 1 and vwarper.reference_cache(subject).hits == 1


def test_the_weights_digest_is_never_read_inside_the_denoising_loop(monkeypatch, clock_image):
    """Meta tensors skip the digest's values, so this runs on the CPU: every sampled read is logged."""
    import vwarper_hooks.files as files
    from vwarper_hooks.testing import tiny_cogvideox_pipeline

    pipe = tiny_cogvideox_pipeline(num_layers=14)
    subject = vwarper.train_subject(pipe, [clock_image], token="<my-clock>", class_word="clock",
                                    config=vwarper.CoarseConfig(steps=1, rank=2, height=32, width=32), progress=False)
    events: list[str] = []
    sample = files._sample
    monkeypatch.setattr(files, "_sample", lambda t: events.append("read") or sample(t))
    pipe.transformer.register_forward_pre_hook(lambda *_: events.append("forward"))
    config = vwarper.WarpConfig(warp_steps=(1, 3), match_layer=2, warp_layers=(3, 4))
    with vwarper.inject(pipe, subject, config):  # the LoRA goes in: the digest is read here, at inject
        assert events and set(events) == {"read"}
        events.clear()
        pipe(**tiny_call_kwargs(num_inference_steps=5, prompt="a <my-clock> clock"))
        assert "read" not in events  # same weights: nothing read
        pipe.transformer.set_adapters(pipe.transformer.active_adapters(), weights=0.5)  # weights change
        events.clear()
        pipe(**tiny_call_kwargs(num_inference_steps=5, prompt="a <my-clock> clock"))
        assert "read" in events and "read" not in events[events.index("forward"):]  # before the loop only
