"""One model in memory, one job at a time: the runner behind every tab that needs the model.

The app queues model events in one gradio concurrency group of size 1; the runner is the second lock.
A job runs in its own thread, and only while it holds the model, so a cancelled job that is still
unwinding (its current step, its `inject` exit) finishes before the next one starts.

Cancelling sets a flag that the job reads at each step (`Job.report` / `Job.check`, called from the
training and denoising callbacks); the job then raises `Cancelled` from inside the pipeline call, so every
``with`` block on its way out closes: `inject` puts the pipe back, staged outputs are removed. After each
job the runner checks that the pipe is as it was (`leftovers`) and logs an error if not.
No gradio here: the tabs wrap it, and the tests drive it directly.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ...errors import VwarperError
from ...guard import is_active
from ...plugins import get_adapter
from ...subject.lora import lora_layer_count

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


class Cancelled(VwarperError):
    """The job was cancelled; nothing it would have written was written."""


@dataclass(frozen=True)
class Progress:
    """Where a job stands: `done` of `total` units (steps), and a line for people."""

    done: int
    total: int
    text: str

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


class Job:
    """One unit of model work (a training or a generation) of one browser session."""

    def __init__(self, session: str, kind: str, work: Callable[[Job, Any], Any]) -> None:
        self.id = next(_ids)
        self.session, self.kind, self._work = session, kind, work
        self._cancel, self._done = threading.Event(), threading.Event()
        self.progress = Progress(0, 0, "waiting for the model (another job is running)")
        self.result: Any = None
        self.error: BaseException | None = None
        self.started: float | None = None  # time.monotonic() when it got the model
        self.finished: float | None = None

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.kind!r}, session={self.session!r}, done={self.done})"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the job to stop at its next step (it raises `Cancelled` there)."""
        self._cancel.set()

    def check(self) -> None:
        """Raise `Cancelled` when the job was asked to stop."""
        if self._cancel.is_set():
            raise Cancelled(f"The {self.kind} was cancelled ({self.progress.text}): nothing was written, and the "
                            "model is as it was.")

    def report(self, done: int, total: int, text: str) -> None:
        """Record progress (from a step callback) and stop there if cancelled."""
        self.progress = Progress(done, total, text)
        self.check()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended (and released the model); True when it has."""
        return self._done.wait(timeout)

    def outcome(self) -> Any:
        """The job's result; raises what the job raised (`Cancelled` when it was cancelled)."""
        if not self.done:
            raise VwarperError(f"Expected a finished job, but job {self.id} is still running. Wait for it first.")
        if self.error is not None:
            raise self.error
        return self.result


def leftovers(pipe: Any) -> list[str]:
    """What a job left on `pipe` that should not be there (empty: the pipe is as loaded): an open
    `inject`, LoRA layers, our attention processors."""
    problems = []
    if is_active(pipe):
        problems.append("an inject() block is still open")
    loras = lora_layer_count(pipe.transformer)
    if loras:
        problems.append(f"{loras} LoRA layers are still on the transformer")
    try:
        installed = get_adapter(pipe.transformer).is_installed(pipe.transformer)
    except VwarperError:
        installed = 0
    if installed:
        problems.append(f"{installed} V-Warper attention processors are still installed")
    return problems


class ModelRunner:
    """Holds the one pipeline and runs jobs on it one at a time, in submission order of the lock."""

    def __init__(self, pipe: Any, history: int = 50) -> None:
        self.pipe = pipe
        self._model = threading.Lock()
        self._state = threading.Lock()
        self._active: list[Job] = []
        self.history: list[Job] = []  # finished jobs, oldest first (at most `history`)
        self._keep = history

    def submit(self, session: str, kind: str, work: Callable[[Job, Any], Any]) -> Job:
        """Start `work(job, pipe)` in a thread that first waits for the model; returns the job at once."""
        job = Job(session, kind, work)
        with self._state:
            self._active.append(job)
        threading.Thread(target=self._run, args=(job,), name=f"vwarper-ui-{kind}-{job.id}", daemon=True).start()
        return job

    def run(self, session: str, kind: str, work: Callable[[Job, Any], Any]) -> Any:
        """`submit` and wait: the job's result (raises what it raised)."""
        job = self.submit(session, kind, work)
        job.wait()
        return job.outcome()

    def _run(self, job: Job) -> None:
        try:
            with self._model:
                job.started = time.monotonic()
                job.progress = Progress(0, 0, f"{job.kind}: starting")
                try:
                    job.check()
                    job.result = job._work(job, self.pipe)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting page as the job's error
                    job.error = exc
                    if not isinstance(exc, VwarperError):
                        logger.exception("the %s job %d failed", job.kind, job.id)
                finally:
                    job.finished = time.monotonic()
                    problems = leftovers(self.pipe)
                    if problems:  # pragma: no cover - inject and train_subject guarantee this
                        logger.error("the %s job %d left the pipe changed: %s", job.kind, job.id, "; ".join(problems))
        finally:
            with self._state:
                self._active.remove(job)
                self.history = [*self.history, job][-self._keep:]
            job._done.set()

    def active(self, session: str | None = None, kind: str | None = None) -> list[Job]:
        """Jobs submitted and not finished (of one session and kind, or all)."""
        with self._state:
            return [j for j in self._active if session in (None, j.session) and kind in (None, j.kind)]

    def running(self) -> Job | None:
        """The job holding the model now, if any."""
        return next((j for j in self.active() if j.started is not None and not j.done), None)

    def cancel(self, session: str | None = None, kind: str | None = None, wait: float | None = 60.0) -> list[Job]:
        """Cancel the jobs of `session` and `kind` (None: all) and wait up to `wait` seconds for them to end."""
        jobs = self.active(session, kind)
        for job in jobs:
            job.cancel()
        deadline = None if wait is None else time.monotonic() + wait
        for job in jobs:
            job.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return jobs

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is active; True when none is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.active():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def follow(self, job: Job, poll: float = 0.25) -> Iterator[Progress]:
        """The job's progress every `poll` seconds until it ends. A page handler yields from it, so gradio
        can close the handler between two polls; `watch` then cancels the job."""
        while not job.wait(poll):
            yield job.progress
