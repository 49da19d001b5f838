"""Training that diverges is refused (issue 13, item 2): a non-finite loss stops `train_subject` at once,
nothing of the diverged step is saved, and stored subjects with non-finite weights or an invalid
rank / alpha are refused at load. Also: photos smaller than the token grid are refused by training."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import DATA, hook_count
from PIL import Image
from safetensors.torch import load_file, save_file

import vwarper_hooks as vwarper
from vwarper_hooks.apps.cli import main
from vwarper_hooks.files import sha256_bytes
from vwarper_hooks.subject.lora import lora_layer_count

FAST = dict(rank=2, mixed_precision="no", gradient_checkpointing=False, height=32, width=32)
IMAGES = sorted((DATA / "clock").glob("*.jpg"))
HUGE = dict(lora_lr=1e10, token_lr=1e10)  # the tiny model's loss is NaN from step 2 on


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    subject = vwarper.train_subject(pipe, IMAGES, "<sks-f>", "clock", vwarper.CoarseConfig(steps=1, **FAST),
                                    progress=False)
    return subject.save(tmp_path_factory.mktemp("subjects") / "clock")


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_saves_nothing_of_it(pipe, tmp_path):
    ckpt = tmp_path / "ckpt"
    config = vwarper.CoarseConfig(steps=4, checkpoint_dir=ckpt, checkpoint_every=1, **HUGE, **FAST)
    seen = []
    with pytest.raises(vwarper.TrainingDivergedError, match=r"but got nan at step 2 of 4") as info:
        vwarper.train_subject(pipe, IMAGES, "<sks-d>", "clock", config, progress=False,
                              callback=lambda step, loss: seen.append(step))
    assert info.value.step == 2 and "lower learning rates (lora_lr=1e+09" in str(info.value)
    assert isinstance(info.value, vwarper.VwarperError) and seen == [1]  # stopped at once
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest.json", "step-00000001"]  # no step 2
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 1
    assert lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0  # the pipe as found


def test_the_cli_exits_3_with_one_line_and_writes_no_subject(tmp_path, capsys):
    out = tmp_path / "subject"
    code = main(["train", "--model", "tiny", "--images", str(DATA / "clock"), "--token", "<sks-n>",
                 "--class-word", "clock", "--out", str(out), "--steps", "3", "--rank", "2", "--resolution", "32",
                 "32", "--lora-lr", "1e10", "--token-lr", "1e10", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and not out.exists()
    assert len(err.splitlines()) == 1 and "step 2 of 3" in err and "lower learning rates" in err


def test_infinite_or_nan_settings_are_refused_by_the_config():
    with pytest.raises(vwarper.ConfigError) as info:
        vwarper.CoarseConfig(lora_lr=math.inf, token_lr=math.nan, alpha=math.inf, max_grad_norm=math.inf)
    assert [p.split(":")[0] for p in info.value.problems] == ["alpha", "lora_lr", "token_lr", "max_grad_norm"]
    assert "Expected a finite number, but got inf" in info.value.problems[0]


def _rewrite(root, name: str, change) -> None:
    """Change one stored file the way an older version (or a diverged run) would have written it, with
    its hash recorded as that version would have."""
    manifest = json.loads((root / "subject.json").read_text())
    tensors = load_file(root / name)
    change(tensors)
    save_file(tensors, root / name, metadata={"format": "pt"})
    manifest["files"][name] = sha256_bytes((root / name).read_bytes())
    (root / "subject.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("name", "value"), [("pytorch_lora_weights.safetensors", math.nan),
                                             ("token_embedding.safetensors", math.inf)])
def test_stored_weights_that_are_not_finite_are_refused_at_load(saved, tmp_path, name, value):
    root = shutil.copytree(saved, tmp_path / "copy")

    def poison(tensors):
        key = sorted(tensors)[0]
        tensors[key] = tensors[key].clone().view(-1).index_fill(0, torch.tensor([0]), value).view_as(tensors[key])

    _rewrite(root, name, poison)
    with pytest.raises(vwarper.SubjectIntegrityError, match="Expected finite weights .* NaN or inf"):
        vwarper.Subject.load(root)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("rank", 0, "lora.rank greater than or equal to 1"),
    ("alpha", 0.0, "lora.alpha greater than 0"),
    ("alpha", math.nan, "lora.alpha: Expected a finite number"),
    ("alpha", -math.inf, "lora.alpha"),
])
def test_an_invalid_rank_or_alpha_is_refused_at_load(saved, tmp_path, field, value, match):
    root = shutil.copytree(saved, tmp_path / "copy")
    manifest = json.loads((root / "subject.json").read_text())
    manifest["lora"][field] = value
    (root / "subject.json").write_text(json.dumps(manifest))  # json writes NaN / -Infinity, and reads them
    with pytest.raises(vwarper.SubjectIntegrityError, match=match):
        vwarper.Subject.load(root)


def test_a_learning_rate_whose_first_adamw_step_overflows_float32_is_refused(tmp_path, capsys):
    with pytest.raises(vwarper.ConfigError, match="lora_lr"):
        vwarper.CoarseConfig(lora_lr=1e38)
    vwarper.CoarseConfig(lora_lr=1e37)  # 10 x 1e37 still fits in float32
    code = main(["train", "--model", "tiny", "--images", str(DATA / "clock"), "--token", "<zz>",
                 "--class-word", "clock", "--out", str(tmp_path / "s"), "--steps", "2", "--token-lr", "1e38", "-q"])
    assert code in (2, 3) and "token_lr" in capsys.readouterr().err.replace("-", "_")
    assert not (tmp_path / "s").exists()


def test_non_finite_losses_never_reach_subject_json(saved, tmp_path):
    subject = vwarper.Subject.load(saved)
    subject.info["losses"] = [0.5, math.nan]
    with pytest.raises(vwarper.SubjectError, match="non-finite training losses"):
        subject.save(tmp_path / "nan")
    assert not (tmp_path / "nan").exists() and list(tmp_path.iterdir()) == []
    root = shutil.copytree(saved, tmp_path / "null")
    manifest = json.loads((root / "subject.json").read_text())
    manifest["losses"] = [0.5, None]  # what an older version wrote for NaN
    (root / "subject.json").write_text(json.dumps(manifest))
    with pytest.raises(vwarper.SubjectIntegrityError, match=r"losses\.1"):
        vwarper.Subject.load(root)


def test_training_refuses_photos_smaller_than_the_token_grid(pipe):
    tiny = Image.open(IMAGES[0]).convert("RGB").resize((3, 3))  # 64x64 is a 4x4 token grid on this model
    with pytest.raises(vwarper.SubjectError, match=r"at least 4x4 pixels .* but got 3x3"):
        vwarper.train_subject(pipe, [tiny, *IMAGES], "<sks-s>", "clock",
                              vwarper.CoarseConfig(steps=1, **{**FAST, "height": 64, "width": 64}), progress=False)
    assert lora_layer_count(pipe.transformer) == 0
