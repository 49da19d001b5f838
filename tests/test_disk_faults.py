"""Disk, cache and VAE faults (issue 13, items 7 and 8), with real files and real processes: a full disk
while the inversion cache writes, cache keys that follow the weights, what a killed save leaves behind,
file modes under the umask, and a tiled VAE whose small tiles change the reference latent's size."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA

import vwarper_hooks as vwarper
from vwarper_hooks.coarse.checkpoint import save_checkpoint
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline, tiny_cogvideox_transformer

IMAGES = sorted((DATA / "clock").glob("*.jpg"))
SMALL = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2), mask=False)
FAST = dict(rank=2, mixed_precision="no", gradient_checkpointing=False, height=32, width=32)


@pytest.fixture(scope="module")
def small():
    return tiny_cogvideox_pipeline(num_layers=6)


@pytest.fixture(scope="module")
def saved(small, tmp_path_factory):
    subject = vwarper.train_subject(small, IMAGES, "<sks-k>", "clock", vwarper.CoarseConfig(steps=1, **FAST),
                                    progress=False)
    return subject.save(tmp_path_factory.mktemp("subjects") / "clock")


def _latents(pipe, subject, **kwargs) -> torch.Tensor:
    with vwarper.inject(pipe, subject, SMALL, **kwargs):
        return pipe(**tiny_call_kwargs(prompt="a <sks-k> clock", num_inference_steps=3, output_type="latent")).frames


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from PIL import Image
import vwarper_hooks as vwarper
from vwarper_hooks.testing import tiny_call_kwargs, tiny_cogvideox_pipeline

pipe = tiny_cogvideox_pipeline(num_layers=6)
subject = vwarper.Subject.from_images([Image.open(sys.argv[2])], "<clock>", "clock")
subject.inversion_dir = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))  # disk "full"
config = vwarper.WarpConfig(match_layer=1, warp_layers=(2, 3), warp_steps=(1, 2), mask=False)
with vwarper.inject(pipe, subject, config):
    frames = pipe(**tiny_call_kwargs(num_inference_steps=3)).frames
print("generated", tuple(frames.shape), vwarper.reference_cache(subject).misses)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_the_inversion_cache_survives_a_full_disk(tmp_path):
    cache = tmp_path / "inversions"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(cache), str(IMAGES[0])], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generated (1, 8, 3, 32, 32) 1" in done.stdout
    assert "could not write the inversion cache" in done.stderr and "File too large" in done.stderr
    assert list(cache.iterdir()) == []  # no partial file, no temporary


def test_two_models_of_one_config_never_share_an_inversion(small, saved, tmp_path):
    other = tiny_cogvideox_pipeline(num_layers=6)
    other.transformer = tiny_cogvideox_transformer(num_layers=6, seed=1)  # same config, other weights
    caches = []
    for pipe in (small, other):
        subject = vwarper.Subject.load(saved)
        subject.inversion_dir = tmp_path / "inversions"
        _latents(pipe, subject)
        caches.append(vwarper.reference_cache(subject))
    assert [(c.disk_hits, c.misses) for c in caches] == [(0, 1), (0, 1)]
    assert len(list((tmp_path / "inversions").glob("*.safetensors"))) == 2

    relearnt = vwarper.Subject.load(saved)  # the same subject with another LoRA: another key too
    relearnt.lora = {k: v * 2 for k, v in relearnt.lora.items()}
    relearnt.inversion_dir = tmp_path / "inversions"
    _latents(small, relearnt)
    assert (vwarper.reference_cache(relearnt).disk_hits, vwarper.reference_cache(relearnt).misses) == (0, 1)


def test_weights_changed_in_place_are_a_new_key_in_memory_too(small, saved):
    subject = vwarper.Subject.load(saved)
    _latents(small, subject)
    _latents(small, subject)
    assert (vwarper.reference_cache(subject).hits, vwarper.reference_cache(subject).misses) == (1, 1)
    weight = small.transformer.transformer_blocks[0].attn1.to_v.weight
    before = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)  # e.g. a user's fuse_lora() or load_state_dict() between two injects
        _latents(small, subject)
        assert (vwarper.reference_cache(subject).hits, vwarper.reference_cache(subject).misses) == (1, 2)
    finally:
        with torch.no_grad():
            weight.copy_(before)



def test_a_new_weight_at_the_old_address_and_version_is_a_new_digest():
    """An allocator that hands a freed LoRA's address to the next one (CUDA's caching allocator does) gives
    new weights the old address and version counter: the old digest must not stand for them."""
    from vwarper_hooks.files import weights_digest

    model = torch.nn.Linear(4, 4)
    old_weight = model.weight
    old = weights_digest(model)
    new_weight = torch.nn.Parameter(old_weight.detach())  # same storage and version counter, a new tensor
    new_weight.data.copy_(torch.randn(4, 4))  # through .data: the version counter stays as it was
    model.weight = new_weight
    assert (new_weight.data_ptr(), new_weight._version) == (old_weight.data_ptr(), old_weight._version)
    assert weights_digest(model) != old

KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
import vwarper_hooks as vwarper

root, at, renames = Path(sys.argv[1]), int(sys.argv[2]), []

def kill(event, args):  # SIGKILL the real save just before its rename number `at` (1: subject aside, 2: new in)
    if event == "os.rename":
        renames.append(args[0])
        if len(renames) == at:
            os.kill(os.getpid(), signal.SIGKILL)

subject = vwarper.Subject.load(root)
sys.addaudithook(kill)
subject.save(root, overwrite=True)
"""


def _kill_a_save(root: Path, at: int) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(root), str(at)], capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_what_a_killed_save_left_is_removed_by_the_next_load_or_save(saved, tmp_path):
    root = shutil.copytree(saved, tmp_path / "clock")
    files = _files(root)
    _kill_a_save(root, 1)  # killed with the new subject written, before the old one is moved aside
    assert len(list(tmp_path.glob(".clock.tmp-*"))) == 1 and _files(root) == files
    vwarper.Subject.load(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clock"]

    _kill_a_save(root, 1)
    vwarper.Subject.load(saved).save(root, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clock"]


def test_a_save_killed_between_its_two_renames_gets_the_old_subject_back(saved, tmp_path):
    root = shutil.copytree(saved, tmp_path / "clock")
    files = _files(root)
    _kill_a_save(root, 1)  # first a stale temporary
    _kill_a_save(root, 2)  # then a kill right after the old subject was moved aside
    assert not root.exists() and len(list(tmp_path.glob(".clock.old-*"))) == 1
    vwarper.Subject.load(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clock"] and _files(root) == files


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_saved_files_follow_the_umask(saved, tmp_path, mask):
    old = os.umask(mask)
    try:
        root = vwarper.Subject.load(saved).save(tmp_path / "subject")
        step = save_checkpoint(tmp_path / "ckpt", 1, {"trainable": {"w": torch.ones(2)}}, {"losses": [0.5]})
    finally:
        os.umask(old)
    for path in [root, *root.rglob("*"), step, *step.rglob("*"), tmp_path / "ckpt" / "latest.json"]:
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert (path.relative_to(tmp_path).as_posix(), oct(path.stat().st_mode & 0o777)) == (
            path.relative_to(tmp_path).as_posix(), oct(want))


def test_a_tiled_vae_whose_tiles_change_the_latent_size_encodes_the_reference_untiled(clock_image):
    pipe = tiny_cogvideox_pipeline(num_layers=6)
    subject = vwarper.Subject.from_images([clock_image], "<sks-k>", "clock")
    plain = _latents(pipe, subject)
    pipe.vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_overlap_factor_height=0.25,
                           tile_overlap_factor_width=0.25)
    video = torch.zeros(1, 3, 5, 32, 32)
    assert pipe.vae.encode(video).latent_dist.mode().shape[-2:] == (5, 5)  # tiled: not the 4 x 4 of the run
    subject = vwarper.Subject.from_images([clock_image], "<sks-k>", "clock")  # nothing cached
    tiled = _latents(pipe, subject)
    assert torch.equal(tiled, plain)
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_height == 16  # the user's setting, back
