"""`vwarper.prepare` (the subject is an artifact; preparing is the method's job), the reference cache kept
beside the subject, and the store reading and writing one type."""

from __future__ import annotations

import gc

import pytest

import vwarper_hooks as vwarper
from vwarper_hooks.guard import is_active
from vwarper_hooks.subject.store import read_subject

SHAPE = dict(num_frames=5, height=32, width=32, num_inference_steps=5, max_sequence_length=16)
CONFIG = vwarper.WarpConfig(warp_steps=(1, 3))


def _fresh(clock_image) -> vwarper.Subject:
    return vwarper.Subject.from_images([clock_image], token="<clock>", class_word="clock")


def _count_forwards(pipe) -> list[int]:
    seen = [0]
    handle = pipe.transformer.register_forward_pre_hook(lambda *_: seen.__setitem__(0, seen[0] + 1))
    return seen, handle


def test_prepare_runs_one_denoising_step_and_leaves_the_pipe_as_it_was(pipe, clock_image):
    subject = _fresh(clock_image)
    seen, handle = _count_forwards(pipe)
    try:
        vwarper.prepare(pipe, subject, config=CONFIG, **SHAPE)  # inverts, then one generation step
        cold = seen[0]
        seen[0] = 0
        vwarper.prepare(pipe, subject, config=CONFIG, **SHAPE)  # cached: the generation step only
        prepared = seen[0]
        seen[0] = 0
        pipe(**vwarper.testing.tiny_call_kwargs(num_inference_steps=5))  # a plain call afterwards: every step
        plain = seen[0]
    finally:
        handle.remove()
    assert prepared == 1  # step 0 of the generation only (CogVideoX: CFG in one batch); the rest interrupted
    assert cold > prepared and plain == 5 and pipe.interrupt is False
    assert vwarper.reference_cache(subject).misses == 1 and len(vwarper.reference_cache(subject)) == 1


def test_a_refused_prepare_leaves_nothing_behind(pipe, clock_image):
    subject = _fresh(clock_image)
    hooks = len(pipe.transformer._forward_pre_hooks)
    with pytest.raises(vwarper.ConfigError, match="match_layer"):
        vwarper.prepare(pipe, subject, config=CONFIG.updated(match_layer=99), **SHAPE)
    assert len(pipe.transformer._forward_pre_hooks) == hooks and not is_active(pipe)
    assert vwarper.reference_cache(subject).misses == 0


def test_subject_prepare_is_a_deprecated_alias(pipe, clock_image):
    subject = _fresh(clock_image)
    with pytest.warns(DeprecationWarning, match="vwarper.prepare"):
        subject.prepare(pipe, config=CONFIG, **SHAPE)
    assert vwarper.reference_cache(subject).misses == 1


def test_the_cache_lives_beside_the_subject_and_goes_with_it(clock_image, tmp_path):
    from vwarper_hooks.fine import reference_cache as module

    subject = _fresh(clock_image)
    cache = vwarper.reference_cache(subject)
    assert vwarper.reference_cache(subject) is cache and cache.directory is None
    assert "reference_cache" not in vars(subject)  # not a field of the artifact
    subject.inversion_dir = tmp_path / "inversions"
    on_disk = vwarper.reference_cache(subject)
    assert on_disk is not cache and on_disk.directory == tmp_path / "inversions"
    other = _fresh(clock_image)
    assert vwarper.reference_cache(other) is not on_disk  # equal subjects, separate caches
    before = len(module._caches)
    del subject, other
    gc.collect()
    assert len(module._caches) == before - 2


def test_the_store_reads_back_the_type_it_writes(clock_image, tmp_path):
    subject = _fresh(clock_image)
    subject.save(tmp_path / "clock")
    again = read_subject(tmp_path / "clock", into=vwarper.Subject)
    assert isinstance(again, vwarper.Subject) and again.token == "<clock>" and len(again.images) == 1
    loaded = vwarper.Subject.load(tmp_path / "clock", cache_inversions=True)
    assert loaded.inversion_dir == tmp_path / "clock" / "inversions"
    assert vwarper.reference_cache(loaded).directory == tmp_path / "clock" / "inversions"
