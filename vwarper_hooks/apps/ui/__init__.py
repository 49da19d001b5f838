"""``vwarper ui``: the browser app (gradio, an optional extra: ``pip install "vwarper-hooks[ui]"``).

Three tabs over one model in memory: Subjects (train from photos, list, load, delete), Generate (coarse
only beside V-Warper, with the mask and flow panels) and Compare (the paper's paired preference study
with its results). Modules: `app` builds the page, `jobs` runs the model work one job at a time with
cancel, `work` is that work, `library` the subjects folder, `profiles` the page's defaults per model,
`study` and `stats` the A/B study; the ``*_tab`` modules are the page's tabs. Only the tabs and `app`
import gradio, and only when the app is built.
"""

from __future__ import annotations

from ...errors import MissingDependencyError

INSTALL = 'pip install "vwarper-hooks[ui]"'


def require_gradio() -> None:
    """Raise `MissingDependencyError` (the CLI exits 4) with the install line when gradio is missing."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"Expected gradio for the browser app, but it is not installed. Run {INSTALL}."
        ) from None
