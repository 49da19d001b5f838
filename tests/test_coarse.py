"""Stage 1 (coarse): LoRA on K/V/O + a learnable subject token, trained on a tiny random pipeline."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA, hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.subject.lora import lora_layer_count
from vwarper_hooks.testing import tiny_cogvideox_pipeline

TOKEN = "<sks-clock>"
PROMPT = f"a photo of a {TOKEN} clock on the beach"
FAST = dict(rank=4, lora_lr=1e-3, token_lr=5e-3, mixed_precision="no", gradient_checkpointing=False)


def clock_paths():
    return sorted((DATA / "clock").glob("*.jpg"))


def weights(module: torch.nn.Module, needle: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if needle in n}


@pytest.fixture(scope="module")
def trained(pipe):
    """(subject, to_q weights before, text-encoder weights before, tokenizer before) after 50 steps."""
    q_before = weights(pipe.transformer, "to_q")
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    tokenizer = pipe.tokenizer
    grads = [p.requires_grad for p in pipe.transformer.parameters()]
    subject = vwarper.train_subject(
        pipe, clock_paths(), TOKEN, "clock", vwarper.CoarseConfig(steps=50, **FAST), progress=False
    )
    return subject, q_before, text_before, tokenizer, grads


def test_training_leaves_pipe_as_found_and_query_frozen(pipe, trained):
    subject, q_before, text_before, tokenizer, grads_before = trained
    q_after = weights(pipe.transformer, "to_q")
    assert q_before.keys() == q_after.keys() and len(q_after) == 2 * 42  # weight + bias per layer
    assert all(torch.equal(q_before[n], q_after[n]) for n in q_before)
    assert lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0
    assert pipe.tokenizer is tokenizer and TOKEN not in tokenizer.get_vocab()
    text_after = pipe.text_encoder.state_dict()
    assert all(torch.equal(text_before[k], text_after[k]) for k in text_before)
    assert [p.requires_grad for p in pipe.transformer.parameters()] == grads_before
    # LoRA on k, v and out.0 of every one of the 42 attention layers, at the configured rank; never on to_q
    names = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in subject.lora}
    expected = {f"transformer_blocks.{i}.attn1.{p}" for i in range(42) for p in ("to_k", "to_v", "to_out.0")}
    assert names == expected
    assert all(v.shape[0 if ".lora_A." in k else 1] == 4 for k, v in subject.lora.items())
    assert subject.lora_rank == 4 and subject.lora_alpha == 4.0
    assert subject.info["training"]["alpha"] == 4.0


def test_exactly_one_embedding_row_changes(pipe, trained):
    subject = trained[0]
    table = pipe.text_encoder.get_input_embeddings()
    rows = table.num_embeddings
    stock = table(torch.arange(rows))
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)):
        token_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
        active = pipe.text_encoder.get_input_embeddings()(torch.arange(rows + 1))
        assert pipe.tokenizer(PROMPT).input_ids.count(token_id) == 1
    assert token_id == rows  # the tokenizer's new id, one past the table: a separate row, not a resize
    assert torch.equal(active[:rows], stock)  # every existing row as it was
    assert torch.equal(active[token_id], subject.token_embedding)
    class_init = table(torch.tensor(pipe.tokenizer("clock", add_special_tokens=False).input_ids)).mean(0)
    assert not torch.allclose(subject.token_embedding, class_init)  # the row was trained


def test_loss_falls_on_repeated_image(trained):
    losses = trained[0].info["losses"]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"coarse loss, mean of steps 1-10: {first:.4f}, steps 41-50: {last:.4f}")
    assert len(losses) == 50 and last < 0.75 * first


def test_inject_activates_coarse_stage_and_restores_everything(pipe, trained):
    subject = trained[0]
    tokenizer, before = pipe.tokenizer, run(pipe, prompt=PROMPT)
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)):
        coarse = run(pipe, prompt=PROMPT)
        assert lora_layer_count(pipe.transformer) == 3 * 42
    assert not torch.equal(coarse, before)
    assert pipe.tokenizer is tokenizer and lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0
    assert torch.equal(run(pipe, prompt=PROMPT), before)
    with pytest.raises(RuntimeError, match="boom"), vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)):
        raise RuntimeError("boom")
    assert pipe.tokenizer is tokenizer and lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0
    assert torch.equal(run(pipe, prompt=PROMPT), before)


def test_round_trip_and_stock_lora_loading(pipe, trained, tmp_path):
    subject = trained[0]
    path = subject.save(tmp_path / "clock")
    assert {p.name for p in path.iterdir()} == {
        "subject.json", "pytorch_lora_weights.safetensors", "token_embedding.safetensors", "images"
    }
    loaded = vwarper.Subject.load(path, pipe=pipe)
    assert loaded.lora.keys() == subject.lora.keys() and loaded.lora_alpha == subject.lora_alpha
    with vwarper.inject(pipe, subject, vwarper.WarpConfig(warp=False)):
        in_memory = run(pipe, prompt=PROMPT)
    with vwarper.inject(pipe, loaded, vwarper.WarpConfig(warp=False)):
        from_disk = run(pipe, prompt=PROMPT)
    assert torch.equal(in_memory, from_disk)

    # A stock diffusers user: load_lora_weights on the directory, then add the token by hand.
    stock = tiny_cogvideox_pipeline()
    stock.load_lora_weights(str(path))
    stock.tokenizer.add_tokens([TOKEN])
    token_id = stock.tokenizer.convert_tokens_to_ids(TOKEN)
    table = stock.text_encoder.get_input_embeddings()
    stock.text_encoder.resize_token_embeddings(max(token_id + 1, table.num_embeddings))
    with torch.no_grad():
        stock.text_encoder.get_input_embeddings().weight[token_id] = loaded.token_embedding
    assert lora_layer_count(stock.transformer) == 3 * 42  # every k/v/o got its LoRA, none skipped
    assert torch.allclose(run(stock, prompt=PROMPT), in_memory, atol=1e-5)
    stock.unload_lora_weights()  # token only: must differ at that tolerance, or the check above proves nothing
    assert not torch.allclose(run(stock, prompt=PROMPT), in_memory, atol=1e-5)


def test_inversion_cache_inside_subject_directory(pipe, trained, tmp_path):
    path = trained[0].save(tmp_path / "clock")
    config = vwarper.WarpConfig(warp_steps=(1, 1), warp_layers=(20, 21))
    first = vwarper.Subject.load(path, pipe=pipe, cache_inversions=True)
    with vwarper.inject(pipe, first, config):
        out_first = run(pipe, prompt=PROMPT)
    assert vwarper.reference_cache(first).misses == 1 and len(list((path / "inversions").glob("*.safetensors"))) == 1
    second = vwarper.Subject.load(path, pipe=pipe, cache_inversions=True)  # a new process would do this
    with vwarper.inject(pipe, second, config):
        out_second = run(pipe, prompt=PROMPT)
    assert vwarper.reference_cache(second).disk_hits == 1 and vwarper.reference_cache(second).misses == 0
    assert torch.equal(out_first, out_second)
    assert vwarper.reference_cache(vwarper.Subject.load(path)).directory is None  # opt-in


def test_resume_after_interruption_matches_uninterrupted_run(pipe, tmp_path):
    config = vwarper.CoarseConfig(steps=6, checkpoint_every=2, **FAST)
    whole = vwarper.train_subject(pipe, clock_paths(), "<sks-a>", "clock", config, progress=False)

    def stop_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt  # as if killed after the step-2 checkpoint
    ckpt = config.model_copy(update={"checkpoint_dir": tmp_path / "ckpt"})
    tokenizer = pipe.tokenizer
    with pytest.raises(KeyboardInterrupt):
        vwarper.train_subject(pipe, clock_paths(), "<sks-a>", "clock", ckpt, progress=False, callback=stop_at_3)
    assert pipe.tokenizer is tokenizer and lora_layer_count(pipe.transformer) == 0 and hook_count(pipe) == 0
    assert [p.name for p in (tmp_path / "ckpt").glob("step-*")] == ["step-00000002"]
    resumed = vwarper.train_subject(pipe, clock_paths(), "<sks-a>", "clock", ckpt, resume=True, progress=False)
    assert resumed.info["losses"] == whole.info["losses"]
    assert all(torch.equal(whole.lora[k], resumed.lora[k]) for k in whole.lora)
    assert torch.equal(whole.token_embedding, resumed.token_embedding)
    other = ckpt.model_copy(update={"seed": 1})
    with pytest.raises(vwarper.SubjectIntegrityError, match="another run"):
        vwarper.train_subject(pipe, clock_paths(), "<sks-a>", "clock", other, resume=True, progress=False)
    scaling = pipe.vae.config.scaling_factor
    pipe.vae.register_to_config(scaling_factor=2 * scaling)  # another VAE: not the same run either
    try:
        with pytest.raises(vwarper.SubjectIntegrityError, match="another run"):
            vwarper.train_subject(pipe, clock_paths(), "<sks-a>", "clock", ckpt, resume=True, progress=False)
    finally:
        pipe.vae.register_to_config(scaling_factor=scaling)


KILLED_RUN = """
import sys, time
from pathlib import Path
import vwarper_hooks as vwarper
from vwarper_hooks.testing import tiny_cogvideox_pipeline
images = sorted(Path(sys.argv[1]).glob("*.jpg"))
config = vwarper.CoarseConfig(steps=6, checkpoint_every=2, checkpoint_dir=sys.argv[2], rank=4, lora_lr=1e-3,
                              token_lr=5e-3, mixed_precision="no", gradient_checkpointing=False)
def slow_after_first_checkpoint(step, loss):
    if step >= 2:
        print("checkpointed", flush=True)
        time.sleep(60)  # the parent kills us here
vwarper.train_subject(tiny_cogvideox_pipeline(), images, "<sks-a>", "clock", config, progress=False,
                      callback=slow_after_first_checkpoint)
"""


def test_resume_after_sigkill_matches_uninterrupted_run(pipe, tmp_path):
    import subprocess
    import sys

    ckpt = tmp_path / "ckpt"
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(DATA / "clock"), str(ckpt)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "checkpointed"
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -9 and (ckpt / "latest.json").is_file()
    config = vwarper.CoarseConfig(steps=6, checkpoint_every=2, checkpoint_dir=ckpt, **FAST)
    resumed = vwarper.train_subject(pipe, clock_paths(), "<sks-a>", "clock", config, resume=True, progress=False)
    whole = vwarper.train_subject(pipe, clock_paths(), "<sks-a>", "clock", config.model_copy(
        update={"checkpoint_dir": None}), progress=False)
    assert resumed.info["losses"] == whole.info["losses"]
    assert all(torch.equal(whole.lora[k], resumed.lora[k]) for k in whole.lora)
    assert torch.equal(whole.token_embedding, resumed.token_embedding)
