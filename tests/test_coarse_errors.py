"""Stage 1 bad input: each gives its specific error and leaves the pipe and the files as they were."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import DATA, hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.subject.lora import lora_layer_count
from vwarper_hooks.testing import tiny_cogvideox_pipeline

FAST = dict(rank=2, lora_lr=1e-3, mixed_precision="no", gradient_checkpointing=False)
IMAGES = sorted((DATA / "clock").glob("*.jpg"))


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    subject = vwarper.train_subject(pipe, IMAGES, "<sks-e>", "clock", vwarper.CoarseConfig(steps=1, **FAST),
                                    progress=False)
    return subject.save(tmp_path_factory.mktemp("subjects") / "clock")


def snapshot(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("images", "token", "match"),
    [
        ([], "<sks-x>", "reference images, but got none"),
        (["missing.jpg"], "<sks-x>", "readable image file"),
        ([DATA / "ATTRIBUTION.md"], "<sks-x>", "readable image file"),
        (IMAGES, "<clock>", "does not know yet"),
        (IMAGES, "dog", "does not know yet"),
        (IMAGES, "my dog", "without whitespace"),
    ],
)
def test_bad_training_input_writes_nothing(pipe, tmp_path, images, token, match):
    ckpt = tmp_path / "ckpt"
    config = vwarper.CoarseConfig(steps=2, checkpoint_dir=ckpt, **FAST)
    tokenizer = pipe.tokenizer
    with pytest.raises(vwarper.SubjectError, match=match):
        vwarper.train_subject(pipe, images, token, "clock", config, progress=False)
    assert not ckpt.exists() and pipe.tokenizer is tokenizer
    assert lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0


def test_bad_config_lists_every_problem():
    with pytest.raises(vwarper.ConfigError) as info:
        vwarper.CoarseConfig(rank=0, lora_lr=-1, mixed_precision="fp8")
    assert [p.split(":")[0] for p in info.value.problems] == ["rank", "lora_lr", "mixed_precision"]
    with pytest.raises(vwarper.ConfigError, match="height and width both set"):
        vwarper.CoarseConfig(height=64)


def test_subject_for_another_transformer_is_refused(saved):
    other = tiny_cogvideox_pipeline(num_layers=4)
    before = run(other)
    with pytest.raises(vwarper.SubjectMismatchError, match="trained for another config .*num_layers 42 there, 4 here"):
        vwarper.Subject.load(saved, pipe=other)
    subject = vwarper.Subject.load(saved)  # without a pipe only the files are checked
    with pytest.raises(vwarper.ConfigError, match="modules it does not have"):
        with vwarper.inject(other, subject, vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3))):
            pass
    assert lora_layer_count(other.transformer) == 0 and hook_count(other) == 0
    assert torch.equal(run(other), before)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_subject_directory_is_refused(saved, tmp_path, damage):
    import shutil

    root = shutil.copytree(saved, tmp_path / "copy")
    lora = root / "pytorch_lora_weights.safetensors"
    if damage == "truncate":
        lora.write_bytes(lora.read_bytes()[: lora.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(lora.read_bytes())
        data[-3] ^= 0xFF
        lora.write_bytes(bytes(data))
    elif damage == "delete":
        (root / "token_embedding.safetensors").unlink()
    else:
        (root / "subject.json").write_text('{"format_version": 99}')
    files = snapshot(root)
    match = {"truncate": "changed or truncated", "flip": "changed or truncated", "delete": "missing",
             "manifest": "format version 1 or 2"}[damage]
    with pytest.raises(vwarper.SubjectIntegrityError, match=match):
        vwarper.Subject.load(root)
    assert snapshot(root) == files  # loading never writes


def test_a_version_1_subject_still_loads_and_new_saves_are_version_2(saved, tmp_path):
    import json
    import shutil

    root = tmp_path / "old"
    shutil.copytree(saved, root)
    manifest = json.loads((root / "subject.json").read_text())
    assert manifest["format_version"] == 2 and manifest["transformer_config"]
    manifest["format_version"] = 1
    del manifest["transformer_config"]  # what 0.1 wrote: the config named by its hash only
    (root / "subject.json").write_text(json.dumps(manifest))
    old = vwarper.Subject.load(root)
    assert old.info["transformer_config"] is None and old.info["transformer_config_hash"]
    manifest["transformer_config"] = {"num_layers": 2}  # a version 1 file never held it
    (root / "subject.json").write_text(json.dumps(manifest))
    with pytest.raises(vwarper.SubjectIntegrityError, match="format version 1 or 2"):
        vwarper.Subject.load(root)


def test_save_refuses_existing_path_and_failed_save_leaves_nothing(saved, tmp_path, monkeypatch):
    subject = vwarper.Subject.load(saved)
    target = tmp_path / "clock"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(vwarper.SubjectError, match="exists"):
        subject.save(target)
    assert os.listdir(target) == ["mine.txt"]
    with pytest.raises(vwarper.SubjectError, match="subject directory"):
        subject.save(target, overwrite=True)  # overwrite replaces subject directories only, never user folders
    assert os.listdir(target) == ["mine.txt"]

    import vwarper_hooks.subject.store as artifact

    def failing_save_file(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        subject.save(tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["clock"]  # no target, no temp directory
    import shutil

    earlier = shutil.copytree(saved, tmp_path / "earlier")
    files = snapshot(earlier)
    with pytest.raises(OSError, match="disk full"):
        subject.save(earlier, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["clock", "earlier"] and snapshot(earlier) == files


def test_saved_subject_follows_the_umask(saved, tmp_path):
    old = os.umask(0o022)
    try:
        root = vwarper.Subject.load(saved).save(tmp_path / "shared")
    finally:
        os.umask(old)
    assert root.stat().st_mode & 0o777 == 0o755


def test_fresh_run_refuses_to_clobber_an_earlier_runs_checkpoints(pipe, tmp_path):
    ckpt = tmp_path / "ckpt"
    config = vwarper.CoarseConfig(steps=2, checkpoint_dir=ckpt, checkpoint_every=1, **FAST)
    vwarper.train_subject(pipe, IMAGES, "<sks-c>", "clock", config, progress=False)
    files = snapshot(ckpt)
    with pytest.raises(vwarper.SubjectError, match="holds a checkpoint"):
        vwarper.train_subject(pipe, IMAGES, "<sks-c>", "clock", config, progress=False)
    with pytest.raises(vwarper.SubjectError, match="steps=1"):  # resume with fewer steps than done
        vwarper.train_subject(pipe, IMAGES, "<sks-c>", "clock", config.model_copy(update={"steps": 1}),
                              resume=True, progress=False)
    assert snapshot(ckpt) == files
    (ckpt / "step-00000002" / "trainable.safetensors").unlink()
    with pytest.raises(vwarper.SubjectIntegrityError, match="readable checkpoint"):
        vwarper.train_subject(pipe, IMAGES, "<sks-c>", "clock", config, resume=True, progress=False)
    assert lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0


def test_training_with_a_scheduler_of_unknown_objective_is_refused_clearly():
    """Every family trains (tests/test_coarse_families.py); what is refused is a scheduler whose
    training objective the trainer does not know, whatever the family."""
    from diffusers import EulerDiscreteScheduler

    from vwarper_hooks.testing import tiny_wan_pipeline

    wan = tiny_wan_pipeline()
    wan.scheduler = EulerDiscreteScheduler(prediction_type="sample")
    with pytest.raises(vwarper.ConfigError, match="training objective the coarse trainer knows"):
        vwarper.train_subject(wan, IMAGES, "<sks-w>", "clock", vwarper.CoarseConfig(steps=1, **FAST),
                              progress=False)
    assert lora_layer_count(wan.transformer) == 0
