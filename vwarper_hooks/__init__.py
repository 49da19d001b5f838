"""V-Warper for diffusers video transformers. Use as ``import vwarper_hooks as vwarper``."""

from .adapter import Adapter, AttentionCall
from .coarse import CoarseConfig, SubjectIntegrityError, SubjectMismatchError, train_subject
from .config import WarpConfig
from .errors import (
    AdapterNotFoundError,
    ConfigError,
    DuplicateAdapterError,
    InjectionActiveError,
    SubjectError,
    SubjectTokenError,
    VwarperError,
)
from .inject import inject
from .registry import get_adapter, list_adapters
from .session import Session, StepDiagnostics
from .subject import Subject

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterNotFoundError",
    "AttentionCall",
    "CoarseConfig",
    "ConfigError",
    "DuplicateAdapterError",
    "InjectionActiveError",
    "SubjectError",
    "SubjectIntegrityError",
    "SubjectMismatchError",
    "SubjectTokenError",
    "VwarperError",
    "WarpConfig",
    "Session",
    "StepDiagnostics",
    "Subject",
    "get_adapter",
    "inject",
    "list_adapters",
    "train_subject",
]
