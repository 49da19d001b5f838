"""`WarpConfig`: the fine-stage settings, with the paper's defaults (appendix A)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

LayerRange = tuple[int, int]
StepRange = tuple[int, int]

#: The paper's choice on CogVideoX-5B (42 attention layers): match at 12, warp 20-29 (appendix A).
#: `WarpConfig`'s defaults; `adapter.proportional_layers` scales them to other depths.
PAPER_DEPTH: int = 42
PAPER_MATCH_LAYER: int = 12
PAPER_WARP_LAYERS: LayerRange = (20, 29)
#: The paper's warp steps of its 50-step runs (0-based, inclusive); `plan.scaled_window` scales them.
PAPER_STEPS: int = 50
PAPER_WARP_STEPS: tuple[int, int] = (3, 19)


def validation_problems(exc: ValidationError, model: str) -> list[str]:
    """A pydantic `ValidationError` as `ConfigError` problems: ``"field: Expected ..., but got .... Do ..."``."""
    problems = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"])) or model
        message, got = error["msg"], error.get("input")
        if message.startswith("Value error, "):  # our own validators already say what to do
            problems.append(f"{where}: {message[len('Value error, '):]}")
        elif message.startswith("Input should be "):
            wanted = message[len("Input should be "):]
            wanted = f"{where} {wanted}" if wanted.startswith(("greater", "less")) else wanted
            problems.append(f"{where}: Expected {wanted}, but got {got!r}. Do fix {where}.")
        else:
            problems.append(f"{where}: {message} (got {got!r}).")
    return problems


class WarpConfig(BaseModel):
    """Settings of V-Warper's fine appearance injection.

    Layer indices are the adapter's flat attention-layer index (0-based); step indices are the
    0-based position in the pipeline's denoising loop. Ranges are inclusive at both ends.

    Ablations of the paper's table 2: ``warp=False`` is "coarse only" (LoRA + token, no
    reference branch), ``mask=False`` is "+ value warping" without masks, defaults are "full".
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    match_layer: int = Field(PAPER_MATCH_LAYER, ge=0, description="layer whose RoPE-free Q/K give correspondences")
    warp_layers: LayerRange = Field(PAPER_WARP_LAYERS, description="layers whose video values are warped")
    warp_steps: StepRange = Field(PAPER_WARP_STEPS, description="denoising steps in which warping happens")
    tau_fg: float = Field(0.3, description="foreground threshold on min-max normalised V->T attention, in [0, 1)")
    tau_cc: float = Field(0.1, description="cycle-consistency threshold (eq. 5), > 0")
    warp: bool = Field(True, description="False: coarse stage only, no reference branch")
    mask: bool = Field(True, description="False: warp every video token (no fg / cycle masks)")
    injector: str = Field("value_warp", description="appearance injector: value_warp, kv_replace, concat")
    matcher: str = Field("rope_free", description="correspondence matcher: rope_free (the paper's), rope, plugins")
    head_combine: Literal["probs", "logits"] = Field(
        "probs", description="eq. 3 heads: per-head softmax then mean (probs) or mean logits then softmax"
    )
    fg_softmax: Literal["joint", "text"] = Field(
        "joint", description="fg score: the model's own softmax over all keys (joint) or over text keys only"
    )
    reference_image: int | Literal["best"] = Field(
        0, description="which reference photo the reference branch uses: an index, or 'best' (chosen per run)"
    )
    num_references: int | None = Field(
        1, ge=1, description="photos per subject matched at once (from reference_image on); None: all photos"
    )
    fg_layers: LayerRange | None = Field(None, description="layers averaged for the foreground mask; None: every layer")
    per_frame_matching: bool = Field(
        True, description="match generation frame f against reference frame f (False: global)"
    )
    match_chunk: int = Field(1024, ge=1, description="rows per chunk of the streamed correlation")
    inversion_prompt: str | None = Field(None, description="prompt for DDIM inversion; None: subject prompt")
    inversion_refine: int = Field(
        0, ge=0, description="fixed-point refinements per DDIM inversion step (0: plain DDIM, as the paper)"
    )
    cache_reference_features: bool = Field(
        False, description="keep the reference branch's match Q/K and warp-layer V per step: later calls run no "
        "reference forward (CogVideoX-5B, 25 frames: ~12 GB in bf16)"
    )
    feature_cache_device_gib: float = Field(
        4.0, ge=0.0, description="cached features stay on the model's device up to this size; beyond it, in "
        "(pinned) CPU memory, copied to the device step by step"
    )
    reference_lockstep: bool = Field(
        True, description="run the reference branch layer by layer beside the generation (one warp layer's "
        "values held, not all; same output). Where CFG runs as separate calls (Wan) or with "
        "cache_reference_features it runs before the generation, as with False"
    )
    keep_diagnostics: bool = Field(True, description="keep per-step flows and masks on CPU")

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, "WarpConfig")) from None

    @field_validator("tau_fg")
    @classmethod
    def _tau_fg_below_one(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:  # also refuses nan
            raise ValueError(
                f"Expected tau_fg in [0, 1), but got {value}: the foreground score is min-max normalised to [0, 1], "
                "so no token would pass and nothing would be warped. Do pick e.g. 0.3 (the paper's), or "
                "mask=False to warp without masks."
            )
        return value

    @field_validator("tau_cc")
    @classmethod
    def _tau_cc_positive(cls, value: float) -> float:
        if not value > 0.0:  # also refuses nan
            raise ValueError(
                f"Expected tau_cc > 0, but got {value}: a cycle error is never below {value}, so the cycle mask "
                "would be empty and nothing would be warped. Do pick e.g. 0.1 (the paper's), or mask=False to "
                "warp without masks."
            )
        if value == float("inf"):
            raise ValueError("Expected a finite tau_cc, but got inf. Do pick e.g. 0.1 (the paper's).")
        return value

    @model_validator(mode="after")
    def _ranges_ordered(self) -> WarpConfig:
        problems = []
        for name in ("warp_layers", "warp_steps", "fg_layers"):
            value = getattr(self, name)
            if value is None:
                continue
            lo, hi = value
            if lo < 0 or hi < lo:
                problems.append(
                    f"Expected {name} as (first, last) with 0 <= first <= last, but got {value}. "
                    f"Swap or fix the bounds."
                )
        if isinstance(self.reference_image, int) and self.reference_image < 0:
            problems.append(f"Expected reference_image >= 0 or 'best', but got {self.reference_image}.")
        if self.reference_image == "best" and self.num_references != 1:
            problems.append(
                f"Expected num_references=1 with reference_image='best' (it keeps one photo), but got "
                f"{self.num_references}. Use one or the other."
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def updated(self, **fields: object) -> WarpConfig:
        """A validated copy with `fields` changed (unknown names and bad values raise `ConfigError`). Fields
        nobody set stay unset, so `for_adapter` still fills in an adapter's default layers."""
        return WarpConfig(**{**{name: getattr(self, name) for name in self.model_fields_set}, **fields})

    def for_adapter(self, adapter: object, depth: int) -> WarpConfig:
        """This config with the adapter's default layers where the user set none (see `Adapter.default_layers`)."""
        defaults = adapter.default_layers(depth) if hasattr(adapter, "default_layers") else None
        if defaults is None:
            return self
        update: dict[str, object] = {}
        if "match_layer" not in self.model_fields_set:
            update["match_layer"] = defaults.match_layer
        if "warp_layers" not in self.model_fields_set:
            update["warp_layers"] = tuple(defaults.warp_layers)
        return self.model_copy(update=update) if update else self

    def layer_problems(self, depth: int) -> list[str]:
        """Every layer index that does not exist in a model of `depth` attention layers (none matter
        with ``warp=False``: the coarse stage alone routes no layer)."""
        problems: list[str] = []
        if not self.warp:
            return problems
        checks = {"match_layer": (self.match_layer,), "warp_layers": self.warp_layers}
        if self.fg_layers is not None:
            checks["fg_layers"] = self.fg_layers
        for name, values in checks.items():
            bad = [v for v in values if v >= depth]
            if bad:
                problems.append(
                    f"Expected {name} within 0..{depth - 1} (the model has {depth} attention layers), "
                    f"but got {getattr(self, name)}. Pick layers below {depth}."
                )
        return problems


def as_config(config: Any) -> WarpConfig:
    """`inject`'s config argument as a `WarpConfig`: None gives the defaults, a dict its fields
    (``WarpConfig(**d)``, validated); anything else is refused by name."""
    if config is None:
        return WarpConfig()
    if isinstance(config, WarpConfig):
        return config
    if isinstance(config, Mapping):
        return WarpConfig(**{str(key): value for key, value in config.items()})
    raise ConfigError([f"Expected a vwarper.WarpConfig, a dict of its fields or None as config, but got "
                       f"{type(config).__name__}. Do pass vwarper.WarpConfig(...)."])
