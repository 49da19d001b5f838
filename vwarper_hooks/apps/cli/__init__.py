"""The ``vwarper`` command: demo, train, generate, eval, analyze, adapters, inspect, ui.

Exit codes (also in ``vwarper --help``): 0 success, 1 unexpected error (a bug; rerun with
``--debug``), 2 bad command line, 3 invalid input (missing path, unreadable model or subject,
invalid setting), 4 optional component not installed, 130 interrupted (Ctrl-C or SIGTERM: both clean up).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.logging import RichHandler

from ... import __version__
from ...errors import MissingDependencyError, VwarperError
from ..exits import EXIT_CODES, EXIT_ERROR, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_MISSING, CliError
from . import commands
from .checks import is_write_failure, write_failure_message
from .render import err_console, error

__all__ = ["main", "build_parser", "CliError", "EXIT_CODES"]

DESCRIPTION = """V-Warper for diffusers video transformers: personalise a video model with a few photos
(coarse stage: LoRA + subject token) and keep the subject's fine appearance by value warping.

Start with `vwarper demo` (offline, CPU, tiny random model), then `vwarper train` and
`vwarper generate` with a real model such as THUDM/CogVideoX-5b."""


def _epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps our line breaks and shows defaults, except where there is none to show (None, flags)
    or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == "" or "default" in text:
            return text
        return super()._get_help_string(action)


def _common(debug_default: object) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=debug_default, help="show tracebacks and debug logs")
    common.add_argument("-v", "--verbose", action="store_true", default=debug_default, help="show info logs")
    common.add_argument("-q", "--quiet", action="store_true", default=debug_default,
                        help="no progress bars or spinners (they go to stderr; results and --json to stdout)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (see `commands` for what each does)."""
    parser = argparse.ArgumentParser(
        prog="vwarper", description=DESCRIPTION, epilog=_epilog(), formatter_class=_Formatter,
        parents=[_common(False)],
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    common = _common(argparse.SUPPRESS)
    for register in commands.REGISTRY:
        register(sub, common, _Formatter, _epilog())
    return parser


def _version() -> str:
    return f"vwarper_hooks {__version__}"


@contextmanager
def _logging(debug: bool, verbose: bool) -> Iterator[None]:
    """Rich log lines on stderr for the command; everything is put back afterwards (in-process callers)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    ours = [logging.getLogger(n) for n in ("vwarper_hooks", "vwarper_adapters")]
    saved_levels = [log.level for log in ours]
    dlog = None
    try:
        from diffusers.utils import logging as dlog

        saved_diffusers = (dlog.get_verbosity(), dlog.is_progress_bar_enabled())
    except ImportError:  # pragma: no cover
        pass
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    root.handlers = [RichHandler(console=err_console, show_time=False, show_path=debug)]
    root.setLevel(logging.WARNING)
    for log in ours:
        log.setLevel(level)
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
                if dlog is not None:
                    dlog.set_verbosity_error()
                    dlog.disable_progress_bar()
            yield
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
        for log, old in zip(ours, saved_levels, strict=True):
            log.setLevel(old)
        if dlog is not None:
            dlog.set_verbosity(saved_diffusers[0])
            (dlog.enable_progress_bar if saved_diffusers[1] else dlog.disable_progress_bar)()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler) unwinds the command like Ctrl-C: every ``finally`` runs, so staged
    outputs and temporary files are removed and the pipeline is put back; exit 130. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def one_line(exc: VwarperError) -> str:
    """The message on one line: a `ConfigError`'s problems joined with "; " (one problem: itself)."""
    problems = getattr(exc, "problems", None)
    text = "; ".join(problems) if problems else str(exc)
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit with 2 here
    debug = bool(getattr(args, "debug", False))
    try:
        with _logging(debug, bool(getattr(args, "verbose", False))), _sigterm_as_interrupt():
            return int(args.handler(args) or 0)
    except KeyboardInterrupt as exc:
        error(f"interrupted ({exc})" if str(exc) else "interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        if debug:
            raise
        error(str(exc))
        return exc.code
    except MissingDependencyError as exc:
        if debug:
            raise
        error(str(exc))
        return EXIT_MISSING
    except VwarperError as exc:
        if debug:
            raise
        error(one_line(exc))
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            raise
        if is_write_failure(exc):  # disk full, quota, read-only: the user's disk, not our bug
            error(write_failure_message(exc))
            return EXIT_INPUT
        error(f"Expected the command to finish, but got an unexpected {type(exc).__name__}: {exc}. "
              "Rerun with --debug for the traceback and report it.")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
