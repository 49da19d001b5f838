"""Errors raised by vwarper_hooks. Messages read "Expected ..., but got .... Do ..."."""

from __future__ import annotations


class VwarperError(Exception):
    """Base class of every error this package raises on purpose."""


class AdapterNotFoundError(VwarperError, LookupError):
    """No registered adapter claims the given transformer."""


class DuplicateAdapterError(VwarperError, ValueError):
    """Two plugins registered adapters under the same name."""


class ConfigError(VwarperError, ValueError):
    """A configuration does not fit the model or the pipeline; lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) found, nothing was changed:\n{lines}")


class InjectionActiveError(VwarperError, RuntimeError):
    """`inject` was entered twice on the same pipeline."""


class SubjectTokenError(VwarperError, ValueError):
    """The prompt does not contain the subject token the foreground mask needs."""


class SubjectError(VwarperError, ValueError):
    """A subject artifact is missing, malformed, tampered with or made for another model."""


class MissingDependencyError(VwarperError, ImportError):
    """An optional package a feature needs is not installed (the message names the pip install)."""


class SubjectIntegrityError(SubjectError):
    """A subject directory or checkpoint is missing, malformed, truncated or tampered with."""


class SubjectMismatchError(SubjectError):
    """The subject was made for another model (other depth, widths, text encoder or config)."""


class TrainingDivergedError(VwarperError, FloatingPointError):
    """Stage-1 training produced a non-finite loss or weights; nothing of the run was saved."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step  # the 1-based optimizer step that diverged


class ConformanceError(VwarperError, AssertionError):
    """An adapter failed a check of the conformance kit (`vwarper_hooks.testing`)."""
