"""`inspect_model`: what a porting author needs to know about a transformer, as plain data.

Lists every attention module (name, processor class, QK-norm types, the processor's rotary
argument and, when the model can be run, whether rotary is actually passed; cross-attention or
not; separate text projections or not), infers the token layout, and names the registered adapter
(and the plugin that registered it) claiming the model. The CLI (`vwarper inspect`) renders
``report.to_dict()``; this module prints nothing.

Models given by id or directory are built from their config on the ``meta`` device: no weights
are downloaded or allocated, so inspecting a 13B transformer is instant.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import WarpConfig
from ..errors import VwarperError
from ..plugins import registered_adapters
from .conformance import forward_inputs
from .probes import _Recorder
from .tiny_models import FAMILIES, tiny_pipeline

logger = logging.getLogger(__name__)

ROTARY_NAMES = ("image_rotary_emb", "rotary_emb", "freqs_cis", "rope", "rotary_pos_emb", "position_embeddings")


@dataclass
class AttentionInfo:
    """One attention module of the model."""

    name: str
    processor: str
    norm_q: str | None
    norm_k: str | None
    rotary_arg: str | None  # the processor's parameter for rotary embeddings, if any
    rotary_used: bool | None  # observed in a forward call (None: not run)
    cross_attention: bool
    separate_text_projections: bool  # add_q/k/v_proj: text projected apart, then joined (dual stream)
    flat_index: int | None = None  # the adapter's layer number for this module, if it is one


@dataclass
class ModelReport:
    """What `inspect_model` found. `to_dict()` is what the CLI renders."""

    model_class: str
    source: str
    attention: list[AttentionInfo] = field(default_factory=list)
    token_layout: str = ""
    adapter: str | None = None
    plugin: str | None = None
    depth: int | None = None  # attention layers in the adapter's flat index
    default_layers: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _type(module: Any) -> str | None:
    return None if module is None else type(module).__name__


def _rotary_arg(processor: Any) -> str | None:
    try:
        params = inspect.signature(processor.__call__).parameters
    except (TypeError, ValueError):
        return None
    return next((p for p in params if p in ROTARY_NAMES or "rotary" in p), None)


def _is_cross(name: str, module: nn.Module) -> bool:
    """Cross-attention by flag, by key width differing from query width, or by diffusers' ``attn2`` naming."""
    if getattr(module, "is_cross_attention", False) or name.rsplit(".", 1)[-1] == "attn2":
        return True
    to_q, to_k = getattr(module, "to_q", None), getattr(module, "to_k", None)
    return isinstance(to_q, nn.Linear) and isinstance(to_k, nn.Linear) and to_q.in_features != to_k.in_features


def _claim(transformer: nn.Module) -> tuple[Any, str | None]:
    for name, (adapter, plugin) in registered_adapters().items():
        try:
            if adapter.matches(transformer):
                return adapter, plugin
        except Exception as exc:  # a plugin's matches() must not break inspection
            logger.warning("adapter %r failed to check the model: %s", name, exc)
    return None, None


def _observe_rotary(transformer: nn.Module, modules: dict[str, nn.Module], args: dict[str, str], inputs: dict) -> dict:
    """name -> whether the rotary argument was non-None in one forward call."""
    seen: dict[str, bool] = {}
    handles = []
    for name, module in modules.items():
        arg = args.get(name)
        if arg is None:
            continue
        params = list(inspect.signature(module.forward).parameters)

        def hook(m: nn.Module, a: tuple, kw: dict, _name: str = name, _arg: str = arg, _p: list = params) -> None:
            value = kw.get(_arg, a[_p.index(_arg)] if _arg in _p and _p.index(_arg) < len(a) else None)
            seen[_name] = seen.get(_name, False) or value is not None

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            transformer(**inputs, return_dict=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def _layout_from_call(adapter: Any, transformer: nn.Module, inputs: dict) -> str:
    recorder = _Recorder({0})
    uninstall = adapter.install(transformer, recorder)
    try:
        with torch.no_grad():
            transformer(**inputs, return_dict=False)
    finally:
        uninstall()
    call = recorder.calls.get(0)
    if call is None:
        return ""
    video, text = call["video"], call["text"]
    v = f"video tokens [{video.start}, {video.stop})"
    if text.stop <= text.start:
        t = recorder.text.get(0)
        cross = f"; text ({t[1].shape[2]} tokens) via a separate cross-attention" if t else ""
        return f"layer 0 (observed): {v} only{cross}"
    t = f"text tokens [{text.start}, {text.stop})"
    order = f"{t} then {v}" if text.start < video.start else f"{v} then {t}"
    return f"layer 0 (observed): one joint sequence, {order}"


def _layout_from_structure(infos: list[AttentionInfo]) -> str:
    if not infos:
        return "no diffusers-style attention modules (no `processor` attribute) found"
    cross = [i for i in infos if i.cross_attention]
    joint = [i for i in infos if i.separate_text_projections and not i.cross_attention]
    parts = []
    if cross:
        parts.append(f"{len(cross)} cross-attention modules: text probably enters through cross-attention")
    if joint:
        parts.append(f"{len(joint)} modules project text apart (add_q/k/v_proj) and attend jointly (dual stream)")
    if not parts:
        parts.append("self-attention only: text probably joins the video tokens in one joint sequence")
    return "inferred from structure: " + "; ".join(parts)


def inspect_transformer(transformer: nn.Module, source: str = "", inputs: dict | None = None) -> ModelReport:
    """Report on a transformer instance; with forward `inputs`, also observe rotary use and layout."""
    adapter, plugin = _claim(transformer)
    flat: dict[int, int] = {}
    if adapter is not None:
        flat = {id(m): i for i, m in enumerate(adapter.attention_layers(transformer))}
    modules = {n: m for n, m in transformer.named_modules() if hasattr(m, "processor")}
    rotary_args = {n: _rotary_arg(m.processor) for n, m in modules.items()}
    used = _observe_rotary(transformer, modules, rotary_args, inputs) if inputs is not None else {}
    infos = [
        AttentionInfo(
            name=name,
            processor=_type(m.processor) or "",
            norm_q=_type(getattr(m, "norm_q", None)),
            norm_k=_type(getattr(m, "norm_k", None)),
            rotary_arg=rotary_args[name],
            rotary_used=used.get(name) if inputs is not None else None,
            cross_attention=_is_cross(name, m),
            separate_text_projections=getattr(m, "add_k_proj", None) is not None,
            flat_index=flat.get(id(m)),
        )
        for name, m in modules.items()
    ]
    report = ModelReport(type(transformer).__name__, source, infos, _layout_from_structure(infos))
    if adapter is None:
        report.notes.append("No registered adapter claims this model: see docs/porting.md to write one.")
        return report
    report.adapter, report.plugin, report.depth = adapter.name, plugin, len(flat)
    own = adapter.default_layers(len(flat))
    layers = WarpConfig().for_adapter(adapter, len(flat))
    report.default_layers = {
        "match_layer": layers.match_layer,
        "warp_layers": list(layers.warp_layers),
        "source": "adapter" if own is not None else "WarpConfig (paper, CogVideoX-5B)",
    }
    if inputs is not None and next(transformer.parameters()).device.type != "meta":
        report.token_layout = _layout_from_call(adapter, transformer, inputs) or report.token_layout
    return report


def _load(target: str) -> nn.Module:
    """Build the transformer of a model id or directory from its config, on the meta device."""
    import diffusers
    from diffusers.configuration_utils import ConfigMixin

    class _AnyConfig(ConfigMixin):
        config_name = "config.json"  # what every diffusers model folder holds

    last: Exception | None = None
    for subfolder in ("transformer", None):
        try:
            config = _AnyConfig.load_config(target, subfolder=subfolder)
        except Exception as exc:  # no such subfolder: try the directory itself
            last = exc
            continue
        name = config.get("_class_name", "")
        cls = getattr(diffusers, name, None)
        if cls is None:
            raise VwarperError(
                f"Expected a diffusers model class in the config of {target!r}, but got {name!r}. "
                "Upgrade diffusers or point at the transformer's folder."
            )
        with torch.device("meta"):
            return cls.from_config(config)
    raise VwarperError(
        f"Expected a diffusers model id or directory with a transformer config, but could not read {target!r} "
        f"({last}). Check the id / path (and network access for hub ids)."
    )


def inspect_model(target: str | None = None, tiny: str | None = None) -> ModelReport:
    """Inspect a model id / local directory (config only, random init on meta) or a tiny test model.

    :param target: e.g. ``"THUDM/CogVideoX-5b"`` or a local pipeline / transformer directory.
    :param tiny: a family of `tiny_models.FAMILIES` (e.g. ``"wan"``): the offline test models,
        which are also run once to observe rotary use and the token layout.
    """
    if (target is None) == (tiny is None):
        raise VwarperError(
            f"Expected exactly one of target or tiny, but got target={target!r}, tiny={tiny!r}. "
            f"Pass a model id / directory, or tiny= one of {sorted(FAMILIES)}."
        )
    if tiny is not None:
        if tiny not in FAMILIES:
            raise VwarperError(f"Expected tiny to be one of {list(FAMILIES)}, but got {tiny!r}. Pick one of them.")
        pipe = tiny_pipeline(tiny)
        return inspect_transformer(pipe.transformer, f"tiny:{tiny}", forward_inputs(pipe))
    return inspect_transformer(_load(target), target)
