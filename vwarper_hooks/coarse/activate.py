"""Put a subject's coarse stage (LoRA + token) on a pipeline for a ``with`` block, then take it off.

The LoRA goes in through diffusers' `load_lora_adapter` (peft underneath) under a unique adapter
name. On exit it is removed so that no peft layer stays behind: when the transformer had no
LoRA before, `unload_lora()` swaps every peft wrapper back for its original `nn.Linear` (the
very same module object, so outputs are bit-identical); when the user had adapters of their
own, only ours is deleted and each layer's previous active adapters are restored. Parameter
``requires_grad`` flags, which peft changes on injection, are restored too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import SubjectError
from ..registry import get_adapter
from .token import input_embedding, subject_token, token_problems

logger = logging.getLogger(__name__)

#: The projections of every attention layer that get LoRA (the query stays frozen, paper 4.1).
LORA_PROJECTIONS = ("to_k", "to_v", "to_out.0")
#: Key prefix of the transformer's weights in diffusers LoRA files.
LORA_PREFIX = "transformer"


class SubjectMismatchError(SubjectError):
    """The subject was made for another model (other depth, widths, text encoder or config)."""


def config_hash(model: nn.Module) -> str:
    """sha256 of a diffusers or transformers model config as sorted JSON (private ``_`` keys and
    library versions left out)."""
    raw = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    config = {k: v for k, v in raw.items() if not k.startswith("_") and k != "transformers_version"}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def base_model_id(pipe: Any) -> str | None:
    """Where the pipeline / transformer was loaded from (None for models built in code)."""
    for config in (getattr(pipe, "config", None), getattr(pipe.transformer, "config", None)):
        name = dict(config or {}).get("_name_or_path")
        if name:
            return str(name)
    return None


def lora_layer_count(module: nn.Module) -> int:
    """Number of peft tuner layers (LoRA wrappers) inside `module`; 0 for a clean model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def _linear(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


def lora_targets(transformer: nn.Module) -> list[str]:
    """Module names of K, V and O of every attention layer, in layer order."""
    names = {id(m): n for n, m in transformer.named_modules()}
    targets = []
    for i, attn in enumerate(get_adapter(transformer).attention_layers(transformer)):
        for proj in LORA_PROJECTIONS:
            name = f"{names[id(attn)]}.{proj}"
            try:
                module = _linear(transformer.get_submodule(name))
            except AttributeError:
                module = None
            if not isinstance(module, nn.Linear):
                raise SubjectError(
                    f"Expected an nn.Linear {proj} in attention layer {i} ({name}), but got "
                    f"{type(module).__name__}. Unfuse projections (transformer.unfuse_qkv_projections())."
                )
            targets.append(name)
    return targets


def lora_shapes(transformer: nn.Module, targets: list[str], rank: int) -> dict[str, tuple[int, ...]]:
    """Expected diffusers-format LoRA keys -> shapes for `targets` at `rank`."""
    shapes = {}
    for name in targets:
        linear = _linear(transformer.get_submodule(name))
        shapes[f"{LORA_PREFIX}.{name}.lora_A.weight"] = (rank, linear.in_features)
        shapes[f"{LORA_PREFIX}.{name}.lora_B.weight"] = (linear.out_features, rank)
    return shapes


def lora_metadata(rank: int, alpha: float, targets: list[str]) -> dict[str, Any]:
    """peft `LoraConfig` kwargs stored with the weights, so loaders use our alpha (no scale trap)."""
    return {
        "r": int(rank),
        "lora_alpha": float(alpha),
        "target_modules": list(targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
        "use_dora": False,
        "use_rslora": False,
    }


def targets_of(lora: dict[str, torch.Tensor]) -> list[str]:
    """Module names a diffusers-format LoRA state dict touches, in key order."""
    found: dict[str, None] = {}
    for key in lora:
        name = key.removeprefix(f"{LORA_PREFIX}.").rsplit(".lora_", 1)[0]
        found[name] = None
    return list(found)


def lora_spec(subject: Any) -> tuple[int, float, list[str], dict[str, str]]:
    """(rank, alpha, target modules, prefixed diffusers metadata) of `subject`'s LoRA.

    Rank defaults to the width of the ``lora_B`` weights and alpha to the rank (scale 1).
    """
    from ..errors import SubjectError

    rank = subject.lora_rank
    if rank is None:
        widths = [v.shape[1] for k, v in subject.lora.items() if "lora_B" in k]
        if not widths:
            raise SubjectError("Expected LoRA weights with lora_B matrices, but got none. Retrain the subject.")
        rank = widths[0]
    rank = int(rank)
    alpha = float(subject.lora_alpha if subject.lora_alpha is not None else rank)
    targets = targets_of(subject.lora)
    meta = {f"{LORA_PREFIX}.{k}": v for k, v in lora_metadata(rank, alpha, targets).items()}
    return rank, alpha, targets, meta


def fit_problems(pipe: Any, subject: Any) -> list[str]:
    """Every reason `subject`'s LoRA or token cannot go on `pipe` (empty: it fits)."""
    problems = []
    transformer = pipe.transformer
    if subject.lora is not None:
        rank, _, targets, _ = lora_spec(subject)
        modules = dict(transformer.named_modules())
        missing = [t for t in targets if t not in modules]
        if missing:
            problems.append(
                f"Expected LoRA weights for modules of this {type(transformer).__name__}, but got "
                f"{len(missing)} for modules it does not have (e.g. {missing[0]}). The subject was trained "
                f"for another model (config {str(subject.info.get('transformer_config_hash'))[:12]}, "
                f"this one {config_hash(transformer)[:12]}). Train it for this model."
            )
        else:
            expected = lora_shapes(transformer, targets, rank)
            wrong = [
                (k, tuple(v.shape), expected.get(k)) for k, v in subject.lora.items() if expected.get(k) != v.shape
            ]
            if wrong:
                key, got, want = wrong[0]
                problems.append(
                    f"Expected LoRA tensor {key} of shape {want}, but got {got} ({len(wrong)} tensors differ). "
                    "The subject was trained for a transformer of other widths; train it for this model."
                )
    if subject.token_embedding is not None:
        problems += token_problems(pipe.tokenizer, subject.token)
        dim = input_embedding(pipe.text_encoder).embedding_dim
        if tuple(subject.token_embedding.shape) != (dim,):
            problems.append(
                f"Expected a token embedding of shape ({dim},) for this text encoder, but got "
                f"{tuple(subject.token_embedding.shape)}. Train the subject with this pipeline's text encoder."
            )
    return problems


@contextmanager
def peft_lora(
    transformer: nn.Module,
    adapter_name: str,
    *,
    config: Any = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Add a LoRA adapter (new, from a peft `config`, or loaded from a diffusers `state_dict`).

    Yields the adapter name; on exit removes it completely (see the module docstring).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    had_lora = lora_layer_count(transformer) > 0
    previous = {m: list(m.active_adapters) for m in transformer.modules() if isinstance(m, BaseTunerLayer)}
    grads = [(p, p.requires_grad) for p in transformer.parameters()]
    own = vars(transformer)
    flag = ("_hf_peft_config_loaded" in own, own.get("_hf_peft_config_loaded"))
    try:
        if config is not None:
            transformer.add_adapter(config, adapter_name=adapter_name)
        else:
            transformer.load_lora_adapter(
                dict(state_dict or {}), prefix=LORA_PREFIX, adapter_name=adapter_name, metadata=metadata
            )
        for module in transformer.modules():  # the user's adapters stay active next to ours
            if isinstance(module, BaseTunerLayer) and module in previous:
                module.set_adapter(previous[module] + [adapter_name])
        yield adapter_name
    finally:
        if not had_lora:
            transformer.unload_lora()
            if flag[0]:
                own["_hf_peft_config_loaded"] = flag[1]
            else:
                own.pop("_hf_peft_config_loaded", None)
        elif adapter_name in getattr(transformer, "peft_config", {}):
            transformer.delete_adapters(adapter_name)
            for module, active in previous.items():
                module.set_adapter(active)
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)
        logger.debug("LoRA adapter %s removed (%d peft layers left)", adapter_name, lora_layer_count(transformer))


@contextmanager
def activate_subject(pipe: Any, subject: Any) -> Iterator[None]:
    """Load the subject's LoRA and token into `pipe` for the ``with`` block.

    Validates first (nothing is touched when the subject does not fit). On exit, normal or by
    exception, the LoRA is unloaded and the tokenizer and embedding modules are restored, so
    the pipeline's outputs are bit-identical to before.
    """
    problems = fit_problems(pipe, subject)
    if problems:
        raise SubjectMismatchError("\n".join(problems))
    expected_hash = subject.info.get("transformer_config_hash")
    if expected_hash and expected_hash != config_hash(pipe.transformer):
        logger.warning("subject %r was trained for another transformer config; shapes fit, using it", subject.token)
    with ExitStack() as stack:
        if subject.token_embedding is not None:
            stack.enter_context(subject_token(pipe, subject.token, subject.token_embedding))
        if subject.lora is not None:
            *_, meta = lora_spec(subject)
            name = f"vwarper_{uuid.uuid4().hex[:8]}"
            stack.enter_context(peft_lora(pipe.transformer, name, state_dict=subject.lora, metadata=meta))
        logger.info("subject %r active (LoRA: %s, token: %s)", subject.token, subject.lora is not None,
                    subject.token_embedding is not None)
        yield
