"""The one list of built-in model families with a tiny test pipeline (imports nothing heavy).

Read by the CLI (`vwarper inspect --tiny`, before diffusers loads), by the tiny models (`tiny_models.FAMILIES`:
the builder of each is ``porting/tiny/<family>.py``) and by the tests (parametrized over it).
"""

from __future__ import annotations

#: built-in family -> the diffusers transformer class it adapts (a new family adds its line here, its
#: adapter module to ``adapters/`` with its entry point, and its tiny pipeline to ``porting/tiny/``)
FAMILY_MODELS: dict[str, str] = {
    "cogvideox": "CogVideoXTransformer3DModel",
    "hunyuan_video": "HunyuanVideoTransformer3DModel",
    "wan": "WanTransformer3DModel",
    "wan22": "WanTransformer3DModel",  # Wan 2.2 A14B: two Wan experts in one WanPipeline, run by the wan adapter
    "skyreels_v2": "SkyReelsV2Transformer3DModel",
    "ltx_video": "LTXVideoTransformer3DModel",
    "hunyuan_video15": "HunyuanVideo15Transformer3DModel",
}
#: built-in families, each with a tiny pipeline
TINY_FAMILIES: tuple[str, ...] = tuple(FAMILY_MODELS)
#: the adapter each family's tiny pipeline is run by (a family not listed: its own name)
ADAPTER_OF: dict[str, str] = {"wan22": "wan"}
#: the families other than the paper's own (CogVideoX)
OTHER_FAMILIES: tuple[str, ...] = tuple(f for f in TINY_FAMILIES if f != "cogvideox")


def unavailable(family: str) -> str | None:
    """Why `family`'s model cannot be built with the installed diffusers (None: it can), e.g. a model class
    newer than the installed release. Imports diffusers."""
    import diffusers

    name = FAMILY_MODELS[family]
    return None if hasattr(diffusers, name) else f"diffusers {diffusers.__version__} has no {name}"
