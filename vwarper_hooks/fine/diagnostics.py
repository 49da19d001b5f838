"""What the session records per warp step, for plots and tests: flow and masks on the token grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepDiagnostics:
    """Flow and masks of one warp step, on CPU, on the (frames, height, width) token grid."""

    step: int
    grid: tuple[int, int, int]
    flow: torch.Tensor  # (F, h, w) int32: reference token index read by each generation token
    fg_score: torch.Tensor | None  # (F, h, w) float16 min-max normalised foreground score
    fg_mask: torch.Tensor | None  # (F, h, w) bool
    cc_mask: torch.Tensor | None  # (F, h, w) bool
    mask: torch.Tensor  # (F, h, w) bool: final injection mask

    def to_cpu(self) -> StepDiagnostics:
        """Compact CPU copy on the token grid (the session records device tensors during the run)."""

        def cpu(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if x is None else x.detach().to("cpu", dtype).reshape(self.grid)

        return StepDiagnostics(
            self.step,
            self.grid,
            cpu(self.flow, torch.int32),
            cpu(self.fg_score, torch.float16),
            cpu(self.fg_mask, torch.bool),
            cpu(self.cc_mask, torch.bool),
            cpu(self.mask, torch.bool),
        )


class DiagnosticsLog:
    """Warp step -> `StepDiagnostics` of the latest run, kept on the model's device while the run
    goes (the denoising loop never waits on a device-to-host copy) and moved to the CPU when read."""

    def __init__(self) -> None:
        self._steps: dict[int, StepDiagnostics] = {}

    def record(self, diagnostics: StepDiagnostics) -> None:
        self._steps[diagnostics.step] = diagnostics

    def clear(self) -> None:
        self._steps.clear()

    def read(self) -> dict[int, StepDiagnostics]:
        """Every step's diagnostics on the CPU, on the (frames, height, width) grid."""
        for step, d in self._steps.items():
            if d.flow.device.type != "cpu" or d.flow.dtype != torch.int32:
                self._steps[step] = d.to_cpu()
        return self._steps
