"""Checks the commands run before any expensive work: numbers, the device, output paths, the
model's frame and size rules; and `staged_outputs`, which writes a run's files all or not at all.

Every failure is a `CliError` (exit 3) with one line: "Expected ..., but got .... Do ...".
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ...files import remove_stale_temporaries
from ...subject.activate import subject_fit_problems
from ...units import VideoUnits
from ..exits import CliError

SEED_MAX = 2**63 - 1
#: OS errors that mean "this output cannot be written here", an input problem rather than a bug.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "File too large", "FileTooLarge", "StorageFull")


def at_least(value: int, low: int, flag: str, example: str) -> None:
    if value < low:
        raise CliError(f"Expected {flag} of at least {low}, but got {value}. Pass e.g. {flag} {example}.")


def finite_positive(value: float, flag: str, example: str, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        want = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise CliError(f"Expected {flag} to be {want}, but got {value}. Pass e.g. {flag} {example}.")


def subject_fits(pipe: object, subject: object, allow_config_mismatch: bool) -> None:
    """Refuse a subject trained for another transformer config (or whose LoRA / token do not fit) as soon
    as the model is loaded, before any generation (`subject_fit_problems`, as `inject` does; a
    mismatch allowed is left for `inject` to warn about, once)."""
    problems = subject_fit_problems(pipe, subject, allow_config_mismatch, warn=False) if subject.has_coarse else []
    if problems:
        raise CliError(" ".join(" ".join(problems).split()).replace("allow_config_mismatch=True",
                                                                     "--allow-config-mismatch"))


def seed(value: int) -> None:
    if not 0 <= value <= SEED_MAX:
        raise CliError(f"Expected --seed between 0 and {SEED_MAX}, but got {value}. Pass e.g. --seed 0.")


def device(name: str | None) -> str | None:
    """`name` when torch can use it here (None: the default device); else a `CliError`."""
    if name is None:
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"Expected a torch device such as cpu, cuda or cuda:1 for --device, but got {name!r}. "
                       "Pass one of those.") from None
    if dev.type == "cpu":
        return name
    backend = getattr(torch, dev.type, None)
    count = backend.device_count() if backend is not None and backend.is_available() else 0
    if dev.type == "mps" and torch.backends.mps.is_available():
        count = 1
    if count == 0 or (dev.index is not None and dev.index >= count):
        found = f"{count} {dev.type} device(s)" if count else f"no {dev.type} device on this machine"
        raise CliError(f"Expected an available --device, but got {name!r} with {found}. "
                       "Pass --device cpu or leave --device out.")
    return name


def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def writable(path: Path, flag: str, kind: str) -> None:
    """Refuse `path` when it cannot be written as a `kind` ("file" or "directory"): a file where a
    folder must be, or a place where no file can be created (tried with a temporary file)."""
    path = path.expanduser()
    if kind == "file" and path.is_dir():
        raise CliError(f"Expected a file name for {flag}, but got {str(path)!r}, which is a directory. "
                       f"Pass e.g. {flag} {path / 'video.mp4'}.")
    if kind == "directory" and path.exists() and not path.is_dir():
        raise CliError(f"Expected a directory for {flag}, but got {str(path)!r}, which is a file. "
                       "Pass another path.")
    base = _existing_ancestor(path.parent if kind == "file" else path)
    if not base.is_dir():
        raise CliError(f"Expected {flag} in a directory, but got {str(path)!r} below the file {str(base)!r}. "
                       "Pass another path.")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise CliError(f"Expected a writable place for {flag}, but got {str(path)!r} ({exc.strerror or exc}). "
                       "Pass a path you can write to.") from None


def outside_subjects(path: Path, subjects: list[str], flag: str, example: str) -> None:
    """Refuse an output path inside a subject directory (its ``images/`` included): a subject holds only what
    `vwarper train` wrote, each file hashed in its ``subject.json``."""
    where = path.expanduser().resolve()
    for folder in subjects:
        root = Path(folder).expanduser().resolve()
        if where == root or root in where.parents:
            raise CliError(f"Expected {flag} outside the subject directory {folder!r}, but got {str(path)!r} inside "
                           f"it: a subject holds only what `vwarper train` wrote. Pass e.g. {flag} {example}.")


def frames_and_size(units: VideoUnits, frames: int | None, height: int | None, width: int | None,
                    model: str, size_flags: str = "--height/--width") -> None:
    """Refuse a frame count the model would not give back exactly, and a size off its token grid (a height or
    width given alone is checked alone: the other is the model's default)."""
    if frames is not None and not units.frames_ok(frames):
        near = " or ".join(map(str, units.nearest_frames(frames)))
        raise CliError(f"Expected a frame count of the form {units.frame_rule()} for {model}, but got {frames}, "
                       f"which it would not decode to {frames} frames. Pass --frames {near}.")
    unit_h, unit_w = units.pixels_per_token
    if (height, width) != (None, None) and not units.size_ok(height or unit_h, width or unit_w):
        got = "x".join("default" if v is None else str(v) for v in (height, width))
        fix = "x".join("default" if v is None else str(max(unit, v // unit * unit))
                       for v, unit in ((height, unit_h), (width, unit_w)))
        raise CliError(f"Expected {size_flags} divisible by {unit_h}x{unit_w} pixels (one token of {model}), "
                       f"but got {got}. Pass e.g. {fix}.")


def is_write_failure(exc: BaseException) -> bool:
    """A disk-full, quota, file-size or permission failure (OSError, or a library's wrapped message)."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return True
    return any(word in str(exc) for word in DISK_FULL_WORDS)


def write_failure_message(exc: BaseException) -> str:
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).splitlines()[0][:200]
    where = f" writing {exc.filename!r}" if isinstance(exc, OSError) and exc.filename else ""
    return (f"Expected to write the outputs, but got {type(exc).__name__}{where}: {text}. "
            "Free disk space or pass an output path on another disk; nothing half-written was left behind.")


@contextmanager
def staged_outputs(targets: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Temporary folders next to each target; on success their files are moved into place.

    Yields ``{name: staging folder}``. Until the block ends without an error nothing appears at a
    target, so a run either writes every output or none (a failed panel leaves no video). The folders
    (``.NAME.tmp-PID-*``) go on an error and on SIGTERM (the CLI turns it into an interrupt); those a
    killed run left are removed by the next (`files.remove_stale_temporaries`).
    """
    staging: dict[str, Path] = {}
    try:
        for name, target in targets.items():
            parent = target.parent.expanduser()
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(parent / target.name)
            staging[name] = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=parent))
        yield staging
        moves = [(file, (targets[name] if name != "video" else targets[name].parent) / file.name)
                 for name, folder in staging.items() for file in sorted(folder.iterdir())]
        blocked = [str(dest) for _, dest in moves if dest.is_dir()]
        if blocked:
            raise CliError(f"Expected to write files, but got directories in the way: {', '.join(blocked)}. "
                           "Move them or pass other output paths; nothing was written.")
        for file, dest in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, dest)
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)

