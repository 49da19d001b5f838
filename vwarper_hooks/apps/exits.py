"""Exit codes of the apps (``vwarper``, the benchmark runner) and `CliError`, an error with its code."""

from __future__ import annotations

from ..errors import VwarperError

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error (a bug): rerun with --debug and report it
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_INPUT = 3  # a path, model, subject or setting is missing or invalid (the message says what to do)
EXIT_MISSING = 4  # an optional component is not installed or not available
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "unexpected error (a bug): rerun with --debug and report the traceback",
    EXIT_USAGE: "bad command line: unknown option, missing argument",
    EXIT_INPUT: "invalid input: missing path, unreadable model or subject, invalid setting",
    EXIT_MISSING: "an optional package is not installed (e.g. imageio-ffmpeg to read mp4 videos)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM; temporary files removed)",
}


class CliError(VwarperError):
    """An error the CLI reports in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code
