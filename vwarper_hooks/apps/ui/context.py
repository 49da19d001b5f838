"""What every tab shares (no gradio here): the runner, the subjects folder, the outputs folder, the defaults.

`follow` is the loop of a page handler that waits for a job: it yields the job's progress while it runs,
and cancels the job when the handler is closed before the job ended (gradio closes a generator handler
when its event is cancelled: the Cancel button, an API client's cancel, a closed tab).
"""

from __future__ import annotations

import html
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jobs import Cancelled, Job, ModelRunner, Progress
from .library import SubjectLibrary
from .profiles import PageDefaults
from .work import page_message

logger = logging.getLogger(__name__)

#: the gradio concurrency group of every event that uses the model (limit 1: one job at a time)
MODEL_GROUP = "model"
#: ids of cancelled jobs whose cancel a page was told of already
_reported: set[int] = set()


@dataclass
class AppContext:
    """The app's state, shared by all sessions."""

    model: str
    runner: ModelRunner
    library: SubjectLibrary
    outputs: Path
    defaults: PageDefaults
    media: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vwarper-ui-media-")))

    @property
    def pipe(self) -> Any:
        return self.runner.pipe

    def close(self) -> None:
        """Cancel running jobs (each unwinds: pipe restored, staged files removed) and drop the media copies."""
        self.runner.cancel(wait=120.0)
        shutil.rmtree(self.media, ignore_errors=True)


def esc(text: object) -> str:
    """`text` safe inside the page's Markdown: a token such as ``<my-dog>`` is text, not an HTML tag."""
    return html.escape(str(text), quote=False)


def code(text: object) -> str:
    """`text` (a path, a token) in code style: a Markdown code span shows ``<my-dog>`` as it is."""
    return "`" + str(text).replace("`", "'") + "`"


def session_of(request: Any) -> str:
    """The browser session (or API client) of a request: jobs and cancels belong to it."""
    return str(getattr(request, "session_hash", None) or "anonymous")


def follow(runner: ModelRunner, job: Job, progress: Callable[..., Any] | None = None,
           poll: float = 0.25) -> Iterator[Progress]:
    """Yield the job's progress while it runs (and show it on `progress`, a `gr.Progress`); cancel the job
    when the consumer stops early (its generator was closed) or raised."""
    ended = False
    try:
        for state in runner.follow(job, poll):
            if progress is not None:
                progress(state.fraction if state.total else None, desc=state.text)
            yield state
        ended = True
    finally:
        if not ended and not job.done:
            logger.info("the page stopped waiting for the %s job %d: cancelling it", job.kind, job.id)
            job.cancel()


def run_job(runner: ModelRunner, job: Job, progress: Callable[..., Any] | None, verb: str, skip: list[Any],
            fail: Callable[[str], BaseException]) -> Generator[tuple, None, Any]:
    """A page handler's updates while `job` runs ("**Training:** step 3/150 ..." with ``verb`` "Training", the
    other outputs left as they are: `skip`), then the job's result as the generator's return value. A cancelled
    job ends with its message and returns None; a failed one ends with its message, then raises ``fail(message)``
    (gradio's ``gr.Error``: this module does not import gradio)."""
    with closing(follow(runner, job, progress)) as states:
        for state in states:
            yield f"**{verb}:** {esc(state.text)}", *skip
    try:
        return job.outcome()
    except Cancelled as exc:
        yield f"**Cancelled:** {esc(exc)}", *skip
        return None
    except Exception as exc:  # noqa: BLE001 - every failure is told in the page, ours in our words
        message = page_message(exc)
        yield f"**Error:** {esc(message)}", *skip
        raise fail(message) from None


def cancel_message(runner: ModelRunner, session: str, kind: str, recent: float = 10.0) -> str:
    """Cancel the session's jobs of `kind`, wait for them to unwind, and say what happened. A job that gradio's
    own cancel (fired by the same click) stopped a moment ago counts too, once."""
    jobs = runner.cancel(session, kind, wait=60.0)
    if not jobs:
        now = time.monotonic()
        jobs = [j for j in runner.history if (j.session, j.kind) == (session, kind) and j.finished is not None
                and now - j.finished < recent]
    stopped = [j for j in jobs if isinstance(j.error, Cancelled) and j.id not in _reported]
    if stopped:
        job = stopped[-1]
        _reported.add(job.id)
        return f"**Cancelled:** {esc(job.error)}"
    return f"Nothing to cancel: no {kind} of yours is running."
