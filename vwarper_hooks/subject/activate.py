"""Put a subject's coarse stage (LoRA + token) on a pipeline for a ``with`` block, then take it off.

`fit_problems` says, before anything is touched, every reason a subject does not fit a pipeline;
`activate_subject` then loads the LoRA (`lora.peft_lora`) and the token (`token.subject_token`)
and removes both on exit, so the pipeline computes exactly what it computed before.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ..contract.adapter import base_model
from ..errors import SubjectMismatchError
from ..files import config_hash, model_config
from .lora import fused_problems, lora_overflow_problem, lora_shapes, lora_spec, peft_lora, scale_adapter
from .token import input_embedding, subject_token, token_problems

logger = logging.getLogger(__name__)

def fit_problems(pipe: Any, subject: Any) -> list[str]:
    """Every reason `subject`'s LoRA or token cannot go on `pipe` (empty: it fits)."""
    transformer = base_model(pipe.transformer)
    problems = fused_problems(transformer) if subject.lora is not None else []
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
            elif targets:
                linear = transformer.get_submodule(targets[0])
                overflow = lora_overflow_problem(subject, getattr(linear, "base_layer", linear).weight.dtype)
                problems += [overflow] if overflow else []
    if subject.token_embedding is not None:
        problems += token_problems(pipe.tokenizer, subject.token)
        dim = input_embedding(pipe.text_encoder, stack=True).embedding_dim
        if tuple(subject.token_embedding.shape) != (dim,):
            problems.append(
                f"Expected a token embedding of shape ({dim},) for this text encoder, but got "
                f"{tuple(subject.token_embedding.shape)}. Train the subject with this pipeline's text encoder."
            )
    return problems


def subject_fit_problems(pipe: Any, subject: Any, allow_config_mismatch: bool = False, warn: bool = True) -> list[str]:
    """Every reason `subject`'s coarse stage does not fit `pipe`: trained for another transformer config
    (with `allow_config_mismatch` only a warning, unless not `warn`: a caller whose `inject` follows), or
    LoRA / token shapes that do not fit. One check for `inject` (`guard`), `Subject.load(..., pipe=...)`
    and ``vwarper generate``."""
    mismatch = config_mismatch(pipe, subject)
    problems = []
    if mismatch and allow_config_mismatch and warn:
        logger.warning("%s Used anyway: allow_config_mismatch=True.", mismatch.split(" Do ")[0])
    elif mismatch and not allow_config_mismatch:
        problems.append(mismatch)
    return problems + fit_problems(pipe, subject)


def config_mismatch(pipe: Any, subject: Any) -> str | None:
    """Why `subject` was trained for another transformer config than `pipe`'s (None: the same, or unknown).

    Subjects record the config itself (``transformer_config``): then the keys both configs have are
    compared (a key only one side has is a default a newer diffusers added, not another model) and the
    differing ones are named. Older subjects record only its hash.
    """
    model = base_model(pipe.transformer)
    info = getattr(subject, "info", None) or {}
    recorded, here = info.get("transformer_config_hash"), config_hash(model)
    if not recorded or recorded == here:
        return None
    theirs, ours = info.get("transformer_config"), model_config(model)
    if isinstance(theirs, dict):
        keys = sorted(k for k in set(theirs) & set(ours) if theirs[k] != ours[k])
        if not keys:
            return None
        listed = "; ".join(f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in keys[:6])
        differ = f"{listed}{f' and {len(keys) - 6} more' if len(keys) > 6 else ''}"
    else:
        differ = "the subject predates recorded configs, so only their hashes can be compared"
    return (
        f"Expected a subject trained for this {type(model).__name__} (config sha256 {here[:12]}), but got one "
        f"trained for another config (sha256 {recorded[:12]}, {info.get('transformer_class')}, base model "
        f"{info.get('base_model')}): {differ}. Do load the base model it was trained for, or train it for this "
        "one; allow_config_mismatch=True uses it anyway (at your own risk)."
    )


@contextmanager
def activate_subject(pipe: Any, subject: Any, checked: bool = False) -> Iterator[None]:
    """Load the subject's LoRA and token into `pipe` for the ``with`` block.

    Validates first (nothing is touched when the subject does not fit), unless `checked`: the caller
    ran `fit_problems` already (`inject`, through `guard.validate`). On exit, normal or by exception,
    the LoRA is unloaded and the tokenizer and embedding modules are restored, so the pipeline's
    outputs are bit-identical to before.
    """
    problems = [] if checked else fit_problems(pipe, subject)
    if problems:
        raise SubjectMismatchError("\n".join(problems))
    with ExitStack() as stack:
        if subject.token_embedding is not None:
            stack.enter_context(subject_token(pipe, subject.token, subject.token_embedding))
        if subject.lora is not None:
            *_, meta = lora_spec(subject)
            name = f"vwarper_{uuid.uuid4().hex[:8]}"
            model = base_model(pipe.transformer)
            stack.enter_context(peft_lora(model, name, state_dict=subject.lora, metadata=meta))
            if subject.lora_scale != 1.0:
                scale_adapter(model, name, subject.lora_scale)
        logger.info("subject %r active (LoRA: %s, token: %s)", subject.token, subject.lora is not None,
                    subject.token_embedding is not None)
        yield
