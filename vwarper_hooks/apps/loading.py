"""Loading a diffusers pipeline for the apps, with the memory options diffusers users expect."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch

from ..units import VideoUnits, video_units
from .exits import CliError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TINY_MODELS = ("tiny", "tiny:cogvideox", "tiny:wan")
LEARNED_MODELS = ("learned",)  # the world model shipped with the package (vwarper_hooks/data/world)


def tiny_demo_pipeline(seed: int = 0, model: str = "tiny") -> Any:
    """The tiny random CogVideoX pipeline with tied Q/K (so that matching means something): the
    model behind ``--model tiny`` and the demo; ``model="tiny:wan"``: the tiny Wan (it runs under context
    parallelism). Imported here, not at the top: the kit imports diffusers, and `vwarper --help` should
    answer without it."""
    from ..porting.tiny_models import tiny_cogvideox_pipeline, tiny_wan_pipeline

    build = tiny_wan_pipeline if model == "tiny:wan" else tiny_cogvideox_pipeline
    return build(seed=seed, tie_qk=True)


def learned_demo_pipeline() -> Any:
    """The learned world model shipped with the package (imported here: the world kit imports diffusers)."""
    from ..world import learned_pipeline

    return learned_pipeline()


def probe_units(model: str) -> tuple[VideoUnits, tuple[int, int] | None] | None:
    """The model's `VideoUnits` and default (height, width), from its configs alone (no weights).

    Builds the pipeline class around a VAE made on the meta device, so the pipeline computes its
    own VAE factors, and reads the transformer's patch size from its config. Returns None when
    the configs cannot be read (the checks then run after loading, before any generation).
    """
    if model in TINY_MODELS or model in LEARNED_MODELS:
        pipe = tiny_demo_pipeline(model=model) if model in TINY_MODELS else learned_demo_pipeline()
        units = video_units(pipe)
        config = dict(pipe.transformer.config)
    else:
        try:
            units, config = _units_from_configs(model)
        except Exception as exc:  # noqa: BLE001 - a probe: any failure only postpones the checks
            logger.debug("could not read the configs of %s before loading (%s: %s)", model, type(exc).__name__, exc)
            return None
    sample = config.get("sample_height"), config.get("sample_width")
    default = (sample[0] * units.spatial, sample[1] * units.spatial) if all(sample) else None
    return units, default


def _units_from_configs(model: str) -> tuple[VideoUnits, dict]:
    from types import SimpleNamespace

    import diffusers
    from accelerate import init_empty_weights

    local = Path(model).expanduser()
    source = str(local) if local.is_dir() else model
    index = diffusers.DiffusionPipeline.load_config(source)
    pipe_cls, vae_cls = getattr(diffusers, index["_class_name"]), getattr(diffusers, index["vae"][1])
    transformer_cls = getattr(diffusers, index["transformer"][1])
    with init_empty_weights():
        vae = vae_cls.from_config(vae_cls.load_config(source, subfolder="vae"))
    config = dict(transformer_cls.load_config(source, subfolder="transformer"))
    params = [n for n, p in inspect.signature(pipe_cls.__init__).parameters.items()
              if n != "self" and p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    skeleton = pipe_cls(**{**dict.fromkeys(params), "vae": vae})
    view = SimpleNamespace(vae=vae, vae_scale_factor_spatial=skeleton.vae_scale_factor_spatial,
                           vae_scale_factor_temporal=skeleton.vae_scale_factor_temporal,
                           transformer=SimpleNamespace(config=config))
    return video_units(view), config


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


def require_dir(path: str | Path, what: str, hint: str) -> Path:
    """`path` as a Path when it is an existing directory, else a one-line `CliError`."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        state = "a file" if folder.exists() else "nothing there"
        raise CliError(f"Expected {what} at {str(folder)!r}, but got {state}. {hint}")
    return folder


def load_pipeline(
    model: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    cpu_offload: bool = False,
    vae_tiling: bool = False,
    vae_slicing: bool = False,
) -> Any:
    """A diffusers pipeline from a hub id or a local directory ('tiny': the random test model; 'learned':
    the world model shipped with the package).

    :param cpu_offload: ``enable_model_cpu_offload()`` (needs an accelerator) instead of ``.to(device)``.
    :param vae_tiling, vae_slicing: decode the video in tiles / one sample at a time (less memory).
    """
    device = device or default_device()
    if model in TINY_MODELS:
        logger.info("using the tiny random test model (random weights, tied Q/K), on one CPU thread")
        torch.set_num_threads(1)  # the CLI process ends after the command; more threads only spin on it
        pipe = tiny_demo_pipeline(model=model)
    elif model in LEARNED_MODELS:
        logger.info("using the learned world model shipped with the package, on one CPU thread")
        torch.set_num_threads(1)
        pipe = learned_demo_pipeline()
    else:
        local = Path(model).expanduser()
        looks_local = model.startswith((".", "/", "~")) or local.exists()
        if looks_local and not local.is_dir():
            raise CliError(
                f"Expected a diffusers model directory or a hub id, but got {model!r}, which does not exist. "
                "Check the path, or pass a hub id such as THUDM/CogVideoX-5b."
            )
        from diffusers import DiffusionPipeline

        torch_dtype = resolve_dtype(dtype, device)
        try:
            pipe = DiffusionPipeline.from_pretrained(str(local) if looks_local else model, torch_dtype=torch_dtype)
        except (OSError, ValueError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
            raise CliError(
                f"Expected a loadable diffusers pipeline, but got {model!r}: {first}. "
                "Check the id or path; when offline, download it first (huggingface-cli download) or pass a folder."
            ) from None
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if cpu_offload:
        try:
            pipe.enable_model_cpu_offload()
        except (RuntimeError, ValueError) as exc:
            raise CliError(
                f"Expected an accelerator for --cpu-offload, but got: {exc}. Drop --cpu-offload on CPU-only machines."
            ) from None
    else:
        pipe.to(device)
    return pipe
