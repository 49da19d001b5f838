"""The optimisation loop of stage 1: LoRA (K/V/O) and the subject token's embedding row, on a pipe
that is put back exactly as found.

Everything model-specific comes from the adapter (`encode_still`, `text_template`, `encode_text`,
`forward_kwargs`) and everything scheduler-specific from the `Objective`; this file names no
model family. One step: draw images, timesteps and noise from the run's generator, noise the
cached latents, encode the prompt with the token row (with grad), one transformer forward under
autocast, MSE against the objective's target, backward, clip, AdamW.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..contract.adapter import Adapter
from ..errors import ConfigError
from ..images import image_to_video
from ..subject.lora import peft_lora
from ..subject.token import subject_token
from .checkpoint import flatten_optimizer, resume_into, save_checkpoint
from .config import CoarseConfig
from .divergence import check_loss, check_weights
from .objective import Objective

logger = logging.getLogger(__name__)

#: peft adapter name of the LoRA while it trains
TRAIN_ADAPTER = "vwarper_train"
#: ``callback(step, loss)`` after each step
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainingJob:
    """One validated training run: everything the loop needs, settled before the pipe is touched."""

    pipe: Any
    adapter: Adapter
    objective: Objective
    images: list[Image.Image]
    token: str
    prompt: str
    height: int
    width: int
    init_row: torch.Tensor  # (text-encoder width,) float32: the class word's input embedding
    targets: list[str]  # module names that get LoRA
    fingerprint: dict[str, Any]  # what a checkpoint must match to be resumed
    config: CoarseConfig


@dataclass
class _Trainee:
    """The live state of a run: what is optimised, the optimizer and the run's generator."""

    named: list[tuple[str, nn.Parameter]]
    row: nn.Parameter
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    model_dtype: torch.dtype  # the transformer's dtype before the fp32 LoRA went in

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named] + [self.row]


def optimise(
    job: TrainingJob, *, resume: bool, progress: bool, callback: StepCallback | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[float]]:
    """Run `job`; returns (diffusers-format LoRA state dict, token row, losses), all on the CPU.

    The pipe is left as found (weights, flags, modes, tokenizer, global RNG), also on error.
    """
    pipe, config = job.pipe, job.config
    device = pipe._execution_device
    cuda = [device.index or 0] if device.type == "cuda" else []
    model_dtype = pipe.transformer.dtype
    with ExitStack() as stack:
        accelerator = stack.enter_context(_accelerator(config.mixed_precision, device))
        stack.enter_context(torch.random.fork_rng(devices=cuda))
        torch.manual_seed(config.seed)
        latents = _cache_latents(job).to(device)
        row = nn.Parameter(job.init_row.clone().to(device))
        # The adapter's encode_text reads text length, dtype and device from a generation call's kwargs.
        template = job.adapter.text_template(pipe, device)
        stack.enter_context(_training_state(pipe, config.gradient_checkpointing))
        stack.enter_context(subject_token(pipe, job.token, row))
        stack.enter_context(peft_lora(pipe.transformer, TRAIN_ADAPTER, config=_lora_config(job)))
        trainee = _trainee(pipe.transformer, row, config, model_dtype)
        start, losses = 0, []
        if resume:
            start, losses = resume_into(config, job.fingerprint, trainee.named, row, trainee.optimizer,
                                        trainee.generator, accelerator)
        optimizer = accelerator.prepare_optimizer(trainee.optimizer, device_placement=False)
        bar = stack.enter_context(_progress(pipe, progress, config.steps, start))
        for step in range(start, config.steps):
            losses.append(_step(job, trainee, latents, template, accelerator, optimizer))
            check_loss(config, step + 1, losses[-1])  # before a checkpoint of this step is written
            _checkpoint(job, trainee, accelerator, step + 1, losses)
            bar(step + 1, losses[-1])
            if callback is not None:
                callback(step + 1, losses[-1])
        from peft.utils import get_peft_model_state_dict

        check_weights(config, len(losses), [*trainee.named, ("token_row", row)])
        state = get_peft_model_state_dict(pipe.transformer, adapter_name=TRAIN_ADAPTER)
        lora = {f"transformer.{k}": v.detach().float().cpu().clone() for k, v in state.items()}
        return lora, row.detach().float().cpu().clone(), losses


def _step(job: TrainingJob, trainee: _Trainee, latents: torch.Tensor, template: dict[str, torch.Tensor],
          accelerator: Any, optimizer: Any) -> float:
    """One optimizer step; returns its loss."""
    pipe, adapter, config, generator = job.pipe, job.adapter, job.config, trainee.generator
    device, batch = latents.device, config.batch_size
    index = torch.randint(0, len(latents), (batch,), generator=generator)
    timestep = job.objective.draw(batch, generator)
    noise = torch.randn((batch, *latents.shape[1:]), generator=generator).to(device)
    noisy, target = job.objective.noisy_and_target(latents[index.to(device)], noise, timestep)
    text = adapter.encode_text(pipe, job.prompt, template)  # with grad: the token row learns
    kwargs = adapter.forward_kwargs(pipe, noisy.to(trainee.model_dtype), timestep.to(device), text)
    with accelerator.autocast():
        pred = adapter.model_output(pipe.transformer(**kwargs)[0], kwargs)  # in the latents' layout
    loss = F.mse_loss(pred.float(), target.float())
    accelerator.backward(loss)
    if config.max_grad_norm is not None:
        accelerator.clip_grad_norm_(trainee.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _cache_latents(job: TrainingJob) -> torch.Tensor:
    """VAE latents (N, ...) of the images as single-frame videos in the transformer layout, float32, once."""
    with torch.no_grad():
        videos = [image_to_video(image, 1, job.height, job.width) for image in job.images]
        latents = torch.cat([job.adapter.encode_still(job.pipe, video) for video in videos])
    return latents.float()


def _lora_config(job: TrainingJob) -> Any:
    from peft import LoraConfig

    config = job.config
    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=job.targets,
                      lora_dropout=0.0, init_lora_weights=True)


def _trainee(transformer: nn.Module, row: nn.Parameter, config: CoarseConfig, model_dtype: torch.dtype) -> _Trainee:
    named = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    for _, param in named:  # train LoRA in fp32 even when the model is bf16
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in named], "lr": config.lora_lr}, {"params": [row], "lr": config.token_lr}],
        weight_decay=config.weight_decay,
    )
    return _Trainee(named, row, optimizer, torch.Generator().manual_seed(config.seed), model_dtype)


def _checkpoint(job: TrainingJob, trainee: _Trainee, accelerator: Any, done: int, losses: list[float]) -> None:
    """Save a resumable checkpoint every ``checkpoint_every`` steps and after the last one."""
    config = job.config
    if config.checkpoint_dir is None or (done % config.checkpoint_every and done != config.steps):
        return
    parts = {"trainable": {**dict(trainee.named), "token_row": trainee.row},
             "optimizer": flatten_optimizer(trainee.optimizer), "rng": {"generator": trainee.generator.get_state()}}
    scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
    state = {"fingerprint": job.fingerprint, "losses": losses, "scaler": scaler}
    check_weights(config, done, parts["trainable"].items())
    save_checkpoint(Path(config.checkpoint_dir), done, parts, state)


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


def _models(pipe: Any) -> list[nn.Module]:
    """Every model of the pipe (transformer, text encoders, VAE, ...), the transformer first."""
    found = [pipe.transformer, pipe.text_encoder]
    for module in getattr(pipe, "components", {}).values():
        if isinstance(module, nn.Module) and all(module is not m for m in found):
            found.append(module)
    return found


@contextmanager
def _training_state(pipe: Any, gradient_checkpointing: bool) -> Iterator[None]:
    """Freeze every weight of every model of the pipe, the transformer in train mode, optional
    checkpointing; all restored after."""
    transformer, models = pipe.transformer, _models(pipe)
    grads = [(p, p.requires_grad) for m in models for p in m.parameters()]
    modes = [(m, m.training) for root in models for m in root.modules()]
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


@contextmanager
def _progress(pipe: Any, enabled: bool, total: int, start: int) -> Iterator[Callable[[int, float], None]]:
    """The pipeline's own progress bar (diffusers' tqdm; `pipe.set_progress_bar_config` applies) with
    the loss, as an update function (a no-op when disabled)."""
    if not enabled:
        yield lambda step, loss: None
        return
    bar = pipe.progress_bar(total=total)
    if "desc" not in getattr(pipe, "_progress_bar_config", {}):
        bar.set_description("coarse stage")
    bar.update(start)

    def update(step: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(step - bar.n)

    try:
        yield update
    finally:
        bar.close()
