"""V-Warper for diffusers video transformers. Use as ``import vwarper_hooks as vwarper``."""

from . import _moved
from .coarse import CoarseConfig, train_subject
from .config import WarpConfig
from .contract.adapter import Adapter
from .contract.calls import AttentionCall
from .errors import (
    AdapterNotFoundError,
    ConfigError,
    DuplicateAdapterError,
    InjectionActiveError,
    SubjectError,
    SubjectIntegrityError,
    SubjectMismatchError,
    SubjectTokenError,
    TrainingDivergedError,
    VwarperError,
)
from .fine.reference_cache import reference_cache
from .fine.session import Session, StepDiagnostics
from .inject import inject
from .parallel import enable_context_parallel
from .plugins import get_adapter, list_adapters
from .prepare import prepare
from .subject.subject import Subject

__version__ = "0.2.0"

_moved.install()  # deprecated 0.1 module paths stay importable for one release

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
    "TrainingDivergedError",
    "VwarperError",
    "WarpConfig",
    "Session",
    "enable_context_parallel",
    "StepDiagnostics",
    "Subject",
    "get_adapter",
    "inject",
    "list_adapters",
    "prepare",
    "reference_cache",
    "train_subject",
]
