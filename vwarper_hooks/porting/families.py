"""The one list of built-in model families with a tiny test pipeline (imports nothing heavy).

Read by the CLI (`vwarper inspect --tiny`, before diffusers loads) and by the tests (parametrized);
`tiny_models.FAMILIES` maps each name to its builder and is checked against this list at import.
"""

from __future__ import annotations

#: built-in families, each with a tiny pipeline in `tiny_models` (a new family adds its name here)
TINY_FAMILIES: tuple[str, ...] = ("cogvideox", "hunyuan_video", "wan", "wan22")
#: the adapter each family's tiny pipeline is run by (a family not listed: its own name)
ADAPTER_OF: dict[str, str] = {"wan22": "wan"}  # Wan 2.2 A14B: two Wan experts in one WanPipeline
#: the families other than the paper's own (CogVideoX)
OTHER_FAMILIES: tuple[str, ...] = tuple(f for f in TINY_FAMILIES if f != "cogvideox")
