"""`train_subject`: stage 1 of V-Warper, coarse appearance adaptation (paper 4.1, appendix A).

LoRA (peft) on the key, value and output projections of every attention layer plus one new
subject token whose text-encoder input embedding is learned; the query projections and all
other weights stay frozen. Reference images are trained as single-frame videos with the
objective of the pipeline's scheduler (`objective.py`: DDPM epsilon / v-prediction, or flow
matching). Any registered model family trains: what differs between families comes from its
adapter. This file validates a run and builds the `Subject`; `loop.py` optimises. The pipe is
left exactly as found. Memory and time estimates per model: docs/coarse_training.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..contract.adapter import Adapter
from ..errors import ConfigError, SubjectError
from ..files import config_hash, model_config, pixel_sha256
from ..guard import is_active
from ..images import ImageInput, load_images
from ..plugins import get_adapter
from ..subject.lora import lora_layer_count, lora_targets
from ..subject.subject import Subject
from ..subject.token import class_word_embedding, input_embedding, token_problems
from ..units import video_units
from .checkpoint import has_checkpoint
from .config import CoarseConfig
from .loop import TRAIN_ADAPTER, StepCallback, TrainingJob, optimise
from .objective import objective_for

logger = logging.getLogger(__name__)

__all__ = ["TRAIN_ADAPTER", "StepCallback", "base_model_id", "train_subject", "training_size"]

#: pipe components the fingerprint names explicitly; every other model of the pipe is added by name
_FINGERPRINTED = ("transformer", "text_encoder", "vae")


def base_model_id(pipe: Any) -> str | None:
    """Where the pipeline / transformer was loaded from (None for models built in code)."""
    for config in (getattr(pipe, "config", None), getattr(pipe.transformer, "config", None)):
        name = dict(config or {}).get("_name_or_path")
        if name:
            return str(name)
    return None


def training_size(pipe: Any, adapter: Adapter, config: CoarseConfig) -> tuple[int, int]:
    """(height, width) in pixels: the config's, else the size a stock call of the pipe generates at."""
    height, width = (config.height, config.width) if config.height is not None else adapter.default_size(pipe)
    unit = adapter.size_multiple(pipe)
    if height % unit or width % unit:
        raise ConfigError([
            f"Expected height and width divisible by {unit} (VAE factor x patch size), but got {height}x{width}. "
            f"Use e.g. {height // unit * unit}x{width // unit * unit}."
        ])
    return height, width


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

    Works for every registered model family whose scheduler has an objective the trainer knows
    (DDPM epsilon / v-prediction, flow matching); others are refused with a `ConfigError`.

    :param images: 3-10 reference photos: PIL images, numpy arrays or torch tensors (diffusers' layouts),
        file paths or a folder of photos (1-2 work with a warning; `images.load_images`).
    :param token: the new subject token, e.g. ``"<my-dog>"`` (must be unknown to the tokenizer).
    :param class_word: the subject's category, e.g. ``"dog"``; initialises the token embedding.
    :param resume: continue from ``config.checkpoint_dir``'s latest checkpoint (same weights
        in the end as an uninterrupted run).
    :param progress: show the pipeline's progress bar (``pipe.set_progress_bar_config`` applies) with the loss.
    :param callback: called as ``callback(step, loss)`` after each step (and its checkpoint);
        raising from it stops training cleanly.
    """
    config = config or CoarseConfig()
    adapter = get_adapter(pipe.transformer)
    objective = objective_for(pipe.scheduler, adapter.expert_boundary(pipe) or 0.0)  # two experts: the first's
    height, width = training_size(pipe, adapter, config)
    images = load_images(images, min_size=video_units(pipe).token_grid(height, width))
    if len(images) < 3:
        logger.warning("only %d reference image(s); the paper uses 3-10 per subject", len(images))
    problems = _problems(pipe, token, config, resume)
    if problems:
        raise SubjectError("\n".join(problems))
    job = TrainingJob(
        pipe=pipe, adapter=adapter, objective=objective, images=images, token=token,
        prompt=f"a {token} {class_word}", height=height, width=width,
        init_row=class_word_embedding(pipe.tokenizer, input_embedding(pipe.text_encoder), class_word),
        targets=lora_targets(pipe.transformer), fingerprint=_fingerprint(pipe, images, token, class_word, config),
        config=config,
    )
    lora, embedding, losses = optimise(job, resume=resume, progress=progress, callback=callback)
    logger.info("trained subject %r: %d steps, loss %.4f -> %.4f", token, len(losses), losses[0], losses[-1])
    return _subject(job, class_word, lora, embedding, losses)


def _problems(pipe: Any, token: str, config: CoarseConfig, resume: bool) -> list[str]:
    """Every reason this run cannot start, before anything is touched."""
    problems = token_problems(pipe.tokenizer, token)
    if is_active(pipe):
        problems.append("Expected no active inject() on the pipe, but one is open. Train outside the with block.")
    if lora_layer_count(pipe.transformer):
        problems.append(f"Expected a transformer without LoRA layers, but got {lora_layer_count(pipe.transformer)}. "
                        "Call pipe.unload_lora_weights() before train_subject().")
    if resume and config.checkpoint_dir is None:
        problems.append("Expected CoarseConfig.checkpoint_dir with resume=True, but got None. Set checkpoint_dir.")
    if not resume and config.checkpoint_dir is not None and has_checkpoint(config.checkpoint_dir):
        problems.append(
            f"Expected an empty checkpoint_dir for a fresh run, but {config.checkpoint_dir} holds a checkpoint "
            "(a fresh run would delete it). Pass resume=True to continue it, or choose another checkpoint_dir."
        )
    return problems


def _fingerprint(pipe: Any, images: list, token: str, class_word: str, config: CoarseConfig) -> dict[str, Any]:
    """What makes a run this run: a resume must see the same models in the same precision."""
    transformer = pipe.transformer
    fingerprint = {
        "config": config.fingerprint(), "token": token, "class_word": class_word,
        "images": [pixel_sha256(im) for im in images], "transformer": config_hash(transformer),
        "text_encoder": config_hash(pipe.text_encoder), "vae": config_hash(pipe.vae), "dtype": str(transformer.dtype),
    }
    for name, module in sorted(getattr(pipe, "components", {}).items()):
        if name not in _FINGERPRINTED and hasattr(module, "config") and hasattr(module, "parameters"):
            fingerprint[name] = config_hash(module)  # e.g. a second text encoder
    return fingerprint


def _subject(job: TrainingJob, class_word: str, lora: dict, embedding: Any, losses: list[float]) -> Subject:
    config, transformer = job.config, job.pipe.transformer
    info = {
        "base_model": base_model_id(job.pipe), "transformer_class": type(transformer).__name__,
        "transformer_config_hash": config_hash(transformer), "transformer_config": model_config(transformer),
        "lora_targets": job.targets, "losses": losses,
        "training": {**config.model_dump(mode="json"), "alpha": config.lora_alpha, "height": job.height,
                     "width": job.width, "prompt": job.prompt, "steps_done": len(losses)},
        "image_sha256": job.fingerprint["images"],
    }
    return Subject(token=job.token, class_word=class_word, images=job.images, lora=lora, lora_rank=config.rank,
                   lora_alpha=config.lora_alpha, token_embedding=embedding, info=info)
