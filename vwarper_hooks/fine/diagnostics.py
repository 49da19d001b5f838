"""What the session records per warp step, for plots and tests: flow and masks on the token grid."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class StepDiagnostics:
    """Flow and masks of one warp step (of one subject), on the (frames, height, width) token grid.

    With several reference photos, `flow` indexes the photos' tokens side by side ([photo a, photo
    b, ...], N tokens each) and `reference` says which photo each token reads.
    """

    step: int
    grid: tuple[int, int, int]
    flow: torch.Tensor  # (F, h, w) int32: reference token index read by each generation token
    fg_score: torch.Tensor | None  # (F, h, w) float16 min-max normalised foreground score
    fg_mask: torch.Tensor | None  # (F, h, w) bool
    cc_mask: torch.Tensor | None  # (F, h, w) bool
    mask: torch.Tensor  # (F, h, w) bool: final injection mask (of this subject, after overlaps)
    reference: torch.Tensor | None = None  # (F, h, w) int32: index of the photo read (None: one photo)

    def to_cpu(self) -> StepDiagnostics:
        """Compact CPU copy on the token grid (the session records device tensors during the run)."""
        types = {"flow": torch.int32, "fg_score": torch.float16, "reference": torch.int32}

        def cpu(name: str, x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            return x.detach().to("cpu", types.get(name, torch.bool)).reshape(self.grid)

        return StepDiagnostics(**{f.name: cpu(f.name, getattr(self, f.name)) for f in fields(self)})


class DiagnosticsLog:
    """Warp step -> `StepDiagnostics` of the latest run, kept on the model's device while the run
    goes (the denoising loop never waits on a device-to-host copy) and moved to the CPU when read.

    With several subjects, each step maps the subject token -> its `StepDiagnostics`.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self._steps: dict[int, dict[str, StepDiagnostics]] = {}

    def record(self, token: str, diagnostics: StepDiagnostics) -> None:
        self._steps.setdefault(diagnostics.step, {})[token] = diagnostics

    def clear(self) -> None:
        self._steps.clear()

    def read(self) -> dict[int, Any]:
        """Every step's diagnostics on the CPU: ``{step: StepDiagnostics}`` for one subject,
        ``{step: {token: StepDiagnostics}}`` for several."""
        for per_token in self._steps.values():
            for token, d in per_token.items():
                if d.flow.device.type != "cpu" or d.flow.dtype != torch.int32:
                    per_token[token] = d.to_cpu()
        if len(self.tokens) == 1:
            return {step: per_token[self.tokens[0]] for step, per_token in self._steps.items()}
        return {step: dict(per_token) for step, per_token in self._steps.items()}
