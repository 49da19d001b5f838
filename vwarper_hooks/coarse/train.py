"""`train_subject`: stage 1 of V-Warper, coarse appearance adaptation (paper 4.1, appendix A).

LoRA (peft) on the key, value and output projections of every attention layer plus one new
subject token whose text-encoder input embedding is learned; the query projections and all
other weights stay frozen. Reference images are trained as single-frame videos with the
pipeline's own objective (v-prediction for CogVideoX). The pipe is left exactly as found.

GPU estimate for CogVideoX-5B at 480x720 (not measured in this session: no GPU was lent; see
docs/coarse_training.md for how to measure). With the pipe in bf16, ``mixed_precision="bf16"``
and gradient checkpointing: transformer weights ~11.1 GB, T5-XXL encoder ~9.5 GB (it runs every
step because the token row is trained; the VAE is only needed once and can be offloaded after
the latents are cached), LoRA rank 128 on K/V/O of 42 layers = 99M fp32 parameters with grads
and AdamW moments ~1.6 GB, activations of one 1 x 60 x 90 latent (1350 video + 226 text tokens)
with checkpointing < 1 GB. Peak ~22-23 GB: fits a 24 GB card only just, a 48 GB A6000 (the
paper's GPU) comfortably. Without checkpointing add roughly 4-6 GB. Expect ~0.5-1 s/step on an
A100/H100 class GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import ConfigError, SubjectError, SubjectIntegrityError
from ..files import config_hash, pixel_sha256
from ..guard import is_active
from ..images import ImageInput, image_to_video, load_images
from ..plugins import get_adapter
from ..subject.lora import lora_layer_count, lora_targets, peft_lora
from ..subject.subject import Subject
from ..subject.token import class_word_embedding, input_embedding, subject_token, token_problems
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .config import CoarseConfig

logger = logging.getLogger(__name__)

TRAIN_ADAPTER = "vwarper_train"
StepCallback = Callable[[int, float], None]


def base_model_id(pipe: Any) -> str | None:
    """Where the pipeline / transformer was loaded from (None for models built in code)."""
    for config in (getattr(pipe, "config", None), getattr(pipe.transformer, "config", None)):
        name = dict(config or {}).get("_name_or_path")
        if name:
            return str(name)
    return None


def training_size(pipe: Any, config: CoarseConfig) -> tuple[int, int]:
    """(height, width) in pixels: the config's, else the pipe's default generation size."""
    tcfg, spatial = pipe.transformer.config, pipe.vae_scale_factor_spatial
    height = config.height or tcfg.sample_height * spatial
    width = config.width or tcfg.sample_width * spatial
    unit = spatial * tcfg.patch_size
    if height % unit or width % unit:
        raise ConfigError([
            f"Expected height and width divisible by {unit} (VAE factor x patch size), but got {height}x{width}. "
            f"Use e.g. {height // unit * unit}x{width // unit * unit}."
        ])
    return height, width


@contextmanager
def _accelerator(mixed_precision: str, device: torch.device) -> Iterator[Any]:
    """An `Accelerator` for autocast / backward / grad scaling; resets accelerate's global state
    afterwards when it was us who initialised it (so the next call may pick another precision)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError([f"Expected a CUDA pipe for mixed_precision='fp16', but got {device}. Use 'bf16' or 'no'."])
    fresh, partial_fresh = not AcceleratorState._shared_state, not PartialState._shared_state
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type != "cuda")
    except ValueError as exc:
        problem = f"Expected a mixed_precision this process's accelerate state allows, but got: {exc}"
        raise ConfigError([problem]) from None
    try:
        yield accelerator
    finally:
        if fresh:
            AcceleratorState._reset_state(reset_partial_state=partial_fresh)


@contextmanager
def _training_state(pipe: Any, gradient_checkpointing: bool) -> Iterator[None]:
    """Freeze every weight, transformer in train mode, optional checkpointing; all restored after."""
    transformer, text_encoder = pipe.transformer, pipe.text_encoder
    grads = [(p, p.requires_grad) for m in (transformer, text_encoder) for p in m.parameters()]
    modes = [(m, m.training) for root in (transformer, text_encoder) for m in root.modules()]
    checkpointing = bool(getattr(transformer, "is_gradient_checkpointing", False))
    try:
        for param, _ in grads:
            param.requires_grad_(False)
        transformer.train()
        if gradient_checkpointing and not checkpointing:
            if not getattr(transformer, "_supports_gradient_checkpointing", False):
                raise ConfigError([f"Expected a model with gradient checkpointing, but {type(transformer).__name__} "
                                   "has none. Use CoarseConfig(gradient_checkpointing=False)."])
            transformer.enable_gradient_checkpointing()
        yield
    finally:
        if gradient_checkpointing and not checkpointing and transformer.is_gradient_checkpointing:
            transformer.disable_gradient_checkpointing()
        for module, training in modes:
            module.train(training)
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors ``"<param index>.<key>"`` (for safetensors, never pickle)."""
    flat = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            flat[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


def _restore_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    full = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    full["state"] = state
    optimizer.load_state_dict(full)


def text_template(transformer: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
    """Stand-in text kwargs of a generation call: `Adapter.encode_text` reads the text length,
    dtype and device from them (CogVideoX: 226 tokens of T5 width)."""
    max_len = int(getattr(transformer.config, "max_text_seq_length", 226))
    text_dim = int(getattr(transformer.config, "text_embed_dim", 1))
    return {"encoder_hidden_states": torch.zeros(1, max_len, text_dim, dtype=transformer.dtype, device=device)}


def rotary_kwargs(pipe: Any, height: int, width: int, frames: int, device: torch.device) -> dict[str, Any]:
    """CogVideoX's 3D RoPE for a (frames, height, width) latent video as forward kwargs; {} without RoPE."""
    if not getattr(pipe.transformer.config, "use_rotary_positional_embeddings", False):
        return {}
    return {"image_rotary_emb": pipe._prepare_rotary_positional_embeddings(height, width, frames, device)}


def _cache_latents(pipe: Any, adapter: Any, images: list[Image.Image], height: int, width: int) -> torch.Tensor:
    """VAE latents (N, F, C, h, w) of the images as single-frame videos, computed once."""
    with torch.no_grad():
        latents = torch.cat([adapter.encode_video(pipe, image_to_video(im, 1, height, width)) for im in images])
    p_t = getattr(pipe.transformer.config, "patch_size_t", None)
    if p_t and latents.shape[1] % p_t:  # CogVideoX 1.5: pad frames like the pipeline does
        latents = torch.cat([latents[:, :1]] * (p_t - latents.shape[1] % p_t) + [latents], dim=1)
    return latents.float()


def train_subject(
    pipe: Any,
    images: ImageInput | Sequence[ImageInput],
    token: str,
    class_word: str,
    config: CoarseConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> Subject:
    """Train the coarse stage for one subject and return it; `pipe` is left as found.

    :param images: 3-10 reference photos (PIL images or paths; 1-2 work with a warning).
    :param token: the new subject token, e.g. ``"<my-dog>"`` (must be unknown to the tokenizer).
    :param class_word: the subject's category, e.g. ``"dog"``; initialises the token embedding.
    :param resume: continue from ``config.checkpoint_dir``'s latest checkpoint (same weights
        in the end as an uninterrupted run).
    :param progress: show a rich progress bar with the loss.
    :param callback: called as ``callback(step, loss)`` after each step (and its checkpoint);
        raising from it stops training cleanly.
    """
    config = config or CoarseConfig()
    images = load_images(images)
    if len(images) < 3:
        logger.warning("only %d reference image(s); the paper uses 3-10 per subject", len(images))
    transformer, text_encoder = pipe.transformer, pipe.text_encoder
    adapter = get_adapter(transformer)
    if adapter.name != "cogvideox" or not hasattr(pipe.scheduler, "alphas_cumprod"):
        raise ConfigError([
            f"Expected a CogVideoX pipeline (the coarse trainer implements CogVideoX's DDPM objective), but got "
            f"{type(pipe).__name__} ({adapter.name} adapter, {type(pipe.scheduler).__name__}). Train on CogVideoX, "
            "or use the fine stage alone: vwarper.Subject.from_images(...) (with a LoRA from the model's own "
            "training script loaded by pipe.load_lora_weights if you have one)."
        ])
    height, width = training_size(pipe, config)
    problems = token_problems(pipe.tokenizer, token)
    if is_active(pipe):
        problems.append("Expected no active inject() on the pipe, but one is open. Train outside the with block.")
    if lora_layer_count(transformer):
        problems.append(f"Expected a transformer without LoRA layers, but got {lora_layer_count(transformer)}. "
                        "Call pipe.unload_lora_weights() before train_subject().")
    if resume and config.checkpoint_dir is None:
        problems.append("Expected CoarseConfig.checkpoint_dir with resume=True, but got None. Set checkpoint_dir.")
    if not resume and config.checkpoint_dir is not None and has_checkpoint(config.checkpoint_dir):
        problems.append(
            f"Expected an empty checkpoint_dir for a fresh run, but {config.checkpoint_dir} holds a checkpoint "
            "(a fresh run would delete it). Pass resume=True to continue it, or choose another checkpoint_dir."
        )
    if problems:
        raise SubjectError("\n".join(problems))
    targets = lora_targets(transformer)
    init_row = class_word_embedding(pipe.tokenizer, input_embedding(text_encoder), class_word)
    device = pipe._execution_device
    fingerprint = {
        "config": config.fingerprint(), "token": token, "class_word": class_word,
        "images": [pixel_sha256(im) for im in images], "transformer": config_hash(transformer),
        # a resume must see the same models in the same precision, or it is not the same run
        "text_encoder": config_hash(text_encoder), "vae": config_hash(pipe.vae), "dtype": str(transformer.dtype),
    }
    prompt = f"a {token} {class_word}"
    scheduler = pipe.scheduler
    alphas = scheduler.alphas_cumprod.float()
    prediction = scheduler.config.prediction_type
    if prediction not in ("v_prediction", "epsilon"):
        raise ConfigError([f"Expected a v_prediction or epsilon scheduler, but got {prediction!r}."])
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    lora_config = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=targets,
                             lora_dropout=0.0, init_lora_weights=True)
    cuda = [device.index or 0] if device.type == "cuda" else []
    model_dtype = transformer.dtype
    with ExitStack() as stack:
        accelerator = stack.enter_context(_accelerator(config.mixed_precision, device))
        stack.enter_context(torch.random.fork_rng(devices=cuda))
        torch.manual_seed(config.seed)
        latents = _cache_latents(pipe, adapter, images, height, width).to(device)
        rope = rotary_kwargs(pipe, height, width, latents.shape[1], device)
        row = nn.Parameter(init_row.clone().to(device))
        # The adapter's encode_text reads text length, dtype and device from a generation call's kwargs.
        template = text_template(transformer, device)
        stack.enter_context(_training_state(pipe, config.gradient_checkpointing))
        stack.enter_context(subject_token(pipe, token, row))
        stack.enter_context(peft_lora(transformer, TRAIN_ADAPTER, config=lora_config))
        named = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
        for _, param in named:  # train LoRA in fp32 even when the model is bf16
            param.data = param.data.float()
        optimizer = torch.optim.AdamW(
            [{"params": [p for _, p in named], "lr": config.lora_lr}, {"params": [row], "lr": config.token_lr}],
            weight_decay=config.weight_decay,
        )
        generator = torch.Generator().manual_seed(config.seed)
        start, losses = 0, []
        if resume:
            start, losses = _resume(config, fingerprint, named, row, optimizer, generator, accelerator)
        wrapped = accelerator.prepare_optimizer(optimizer, device_placement=False)
        bar = stack.enter_context(_progress(progress, config.steps, start))
        for step in range(start, config.steps):
            index = torch.randint(0, len(latents), (config.batch_size,), generator=generator)
            timestep = torch.randint(0, len(alphas), (config.batch_size,), generator=generator)
            noise = torch.randn((config.batch_size, *latents.shape[1:]), generator=generator).to(device)
            x0 = latents[index.to(device)]
            a = alphas[timestep].view(-1, 1, 1, 1, 1).to(device)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = a.sqrt() * noise - (1 - a).sqrt() * x0 if prediction == "v_prediction" else noise
            text = adapter.encode_text(pipe, prompt, template)  # with grad: the token row learns
            text = {k: v.expand(config.batch_size, *v.shape[1:]) if torch.is_tensor(v) else v for k, v in text.items()}
            kwargs = adapter.reference_kwargs(rope,
                                              noisy.to(model_dtype), text, timestep.to(device))
            with accelerator.autocast():
                pred = transformer(**kwargs)[0]
            loss = F.mse_loss(pred.float(), target.float())
            accelerator.backward(loss)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_([p for _, p in named] + [row], config.max_grad_norm)
            wrapped.step()
            wrapped.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            done = step + 1
            if config.checkpoint_dir is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                parts = {"trainable": {**dict(named), "token_row": row}, "optimizer": _flatten_optimizer(optimizer),
                         "rng": {"generator": generator.get_state()}}
                scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                save_checkpoint(Path(config.checkpoint_dir), done,
                                parts, {"fingerprint": fingerprint, "losses": losses, "scaler": scaler})
            bar(done, losses[-1])
            if callback is not None:
                callback(done, losses[-1])
        state = get_peft_model_state_dict(transformer, adapter_name=TRAIN_ADAPTER)
        lora = {f"transformer.{k}": v.detach().float().cpu().clone() for k, v in state.items()}
        embedding = row.detach().float().cpu().clone()
    logger.info("trained subject %r: %d steps, loss %.4f -> %.4f", token, len(losses), losses[0], losses[-1])
    info = {
        "base_model": base_model_id(pipe), "transformer_class": type(transformer).__name__,
        "transformer_config_hash": config_hash(transformer), "lora_targets": targets, "losses": losses,
        "training": {**config.model_dump(mode="json"), "alpha": config.lora_alpha, "height": height,
                     "width": width, "prompt": prompt, "steps_done": len(losses)},
        "image_sha256": fingerprint["images"],
    }
    return Subject(token=token, class_word=class_word, images=images, lora=lora, lora_rank=config.rank,
                   lora_alpha=config.lora_alpha, token_embedding=embedding, info=info)


def _resume(config: CoarseConfig, fingerprint: dict, named: list[tuple[str, nn.Parameter]], row: nn.Parameter,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, accelerator: Any) -> tuple[int, list[float]]:
    """Load the latest checkpoint into the live objects; returns (completed steps, losses so far)."""
    found = load_checkpoint(Path(config.checkpoint_dir), ("trainable", "optimizer", "rng"))
    if found is None:
        logger.info("no checkpoint in %s; starting from step 0", config.checkpoint_dir)
        return 0, []
    parts, state = found
    if state["step"] > config.steps:
        raise SubjectError(
            f"Expected steps >= the checkpoint's {state['step']} completed steps, but got steps={config.steps}. "
            f"Raise steps to at least {state['step']}."
        )
    if state.get("fingerprint") != fingerprint:
        raise SubjectIntegrityError(
            f"Expected a checkpoint of this very run (same images, token, model and settings), but got one "
            f"of another run in {config.checkpoint_dir}. Use another checkpoint_dir, or resume=False."
        )
    trainable = parts["trainable"]
    if set(trainable) != {n for n, _ in named} | {"token_row"}:
        raise SubjectIntegrityError(f"Expected the checkpoint to hold this run's LoRA, but its keys differ. "
                                    f"Delete {config.checkpoint_dir} or resume=False.")
    with torch.no_grad():
        for name, param in named:
            param.copy_(trainable[name])
        row.copy_(trainable["token_row"])
    _restore_optimizer(optimizer, parts["optimizer"])
    generator.set_state(parts["rng"]["generator"])
    if state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    logger.info("resumed from step %d in %s", state["step"], config.checkpoint_dir)
    return int(state["step"]), [float(x) for x in state.get("losses", [])]


@contextmanager
def _progress(enabled: bool, total: int, start: int) -> Iterator[Callable[[int, float], None]]:
    """A rich progress bar with the loss, as an update function (a no-op when disabled)."""
    if not enabled:
        yield lambda step, loss: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("coarse stage"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=total, completed=start, loss=float("nan"))
        yield lambda step, loss: bar.update(task, completed=step, loss=loss)
