"""The reference branch in lockstep with the generation: one warp layer's reference values at a time.

Run before the generation's forward, the reference branch would hold the values of every warp layer
(10 layers at CogVideoX-5B: about 570 MiB at 25 frames) until the generation reaches them. In
lockstep, the reference forward runs in a worker thread that only ever runs while the main thread
waits for it (strict hand-off: one side at a time, so there is no concurrency, only a second stack).
It runs up to the first warp layer before the generation's forward and pauses there; each time the
generation enters a warp layer, the reference runs that layer (its values captured) and pauses again
at the next one. So the generation reads layer l's reference values right after they were made, and
drops them once used: the reference holds its paused block inputs and one layer's values, not ten.

The arithmetic is the same as before the generation (same ops in the same order on each branch), so
the output is bit-identical. The worker takes the caller's grad mode, inference mode, autocast, CUDA
device and stream, and torch function and dispatch modes (a FLOP counter sees the worker's work).
An error in the worker is raised in the main thread; a main thread that leaves early (an error,
Ctrl-C) cancels the paused worker, which unwinds at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch


class Cancelled(BaseException):
    """Unwinds a paused worker whose main thread will not resume it (not an `Exception`: nothing in
    the model's forward may catch it)."""


def _mode_stacks() -> list[Any]:
    """The calling thread's torch function modes (e.g. ``with torch.device(...)``) and dispatch modes
    (FlopCounterMode, FakeTensorMode, memory trackers), outermost first: torch keeps them per thread."""
    try:
        from torch.overrides import _get_current_function_mode_stack
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    except ImportError:  # pragma: no cover - a torch without these private helpers
        return []
    return [*_get_current_function_mode_stack(), *_get_current_dispatch_mode_stack()]


def _caller_state() -> Callable[[], contextlib.ExitStack]:
    """The torch thread-local state of the calling thread, to be entered in another thread."""
    grad, inference, modes = torch.is_grad_enabled(), torch.is_inference_mode_enabled(), _mode_stacks()
    autocast = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    stream = torch.cuda.current_stream() if cuda else None

    def enter() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(inference))
        stack.enter_context(torch.set_grad_enabled(grad))
        for device, dtype in autocast:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        if stream is not None:
            torch.cuda.set_device(stream.device)
            stack.enter_context(torch.cuda.stream(stream))
        for mode in modes:  # entered and left while the caller stays inside them (strict hand-off)
            stack.enter_context(mode)
        return stack

    return enter


class Worker:
    """A thread that runs reference forwards (jobs) only while the main thread waits in `resume` (strict
    hand-off). One per subject for a whole session: a new job reuses the thread (`submit`).

    Inside a job, `pause(layer)` hands control back; `resume` runs it on to its next pause or its end;
    `cancel` ends the job wherever it is; `shutdown` ends the thread.
    """

    def __init__(self, fn: Callable[[], None], name: str) -> None:
        self._turn = threading.Condition()
        self._worker_runs = False
        self._closing = False
        self._error: BaseException | None = None
        self._job: tuple[Callable[[], None], Callable[[], contextlib.ExitStack]] | None = None
        self._cancelled = False
        self.done = True
        #: the layer the worker waits before (None: running, not started or done)
        self.paused_at: int | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self.submit(fn)

    def submit(self, fn: Callable[[], None]) -> None:
        """In the main thread: give the (idle) worker its next job; it starts at the next `resume`."""
        if not self.done:
            raise RuntimeError("Expected an idle reference worker, but its previous job is still running.")
        self._job, self._cancelled, self._error, self.done = (fn, _caller_state()), False, None, False

    def _main(self) -> None:
        while True:
            with self._turn:
                self._turn.wait_for(lambda: self._worker_runs)
                if self._closing:
                    self._worker_runs = False
                    self._turn.notify_all()
                    return
                fn, enter = self._job
            try:
                if not self._cancelled:
                    with enter():
                        fn()
            except Cancelled:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
                self._error = exc
            finally:
                with self._turn:
                    self._job = None
                    self.done, self.paused_at, self._worker_runs = True, None, False
                    self._turn.notify_all()

    def pause(self, layer: int) -> None:
        """In the worker: wait before `layer` until resumed (`Cancelled` if the main thread gave up)."""
        with self._turn:
            self.paused_at, self._worker_runs = layer, False
            self._turn.notify_all()
            self._turn.wait_for(lambda: self._worker_runs)
            self.paused_at = None
        if self._cancelled:
            raise Cancelled

    def resume(self) -> None:
        """In the main thread: run the job to its next pause or its end; raise what it raised."""
        if self.done:
            return
        with self._turn:
            self._worker_runs = True
            self._turn.notify_all()
            try:
                self._turn.wait_for(lambda: not self._worker_runs)
            except BaseException:  # Ctrl-C while the worker runs: it must not run on beside our unwinding
                self._cancelled = True
                self._turn.wait_for(lambda: not self._worker_runs)  # its next pause (a layer at most)
                raise
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def cancel(self) -> None:
        """In the main thread: end the job wherever it is (it unwinds at its next pause); the thread stays."""
        self._cancelled = True
        with self._turn:
            self._turn.wait_for(lambda: not self._worker_runs)  # a worker still running reaches a pause
            if not self.done:
                self._worker_runs = True
                self._turn.notify_all()
                self._turn.wait_for(lambda: self.done)
        self._error = None

    def shutdown(self) -> None:
        """In the main thread: cancel the job, end the thread and join it."""
        self.cancel()
        with self._turn:
            self._closing, self._worker_runs = True, True
            self._turn.notify_all()
        self._thread.join()

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread


class Lockstep:
    """The paused reference workers of one generation forward, and the layers they pause before.

    The worker threads (one per subject) live until `shutdown` (the session's end): each reference
    forward is a new job on its subject's thread, not a new thread.
    """

    def __init__(self) -> None:
        self._workers: list[tuple[Worker, Callable[[], Any]]] = []  # (worker, its routing context)
        self._threads: dict[str, Worker] = {}
        self.layers: frozenset[int] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self._workers)

    def start(self, fn: Callable[[], None], routing: Callable[[], Any], layers: frozenset[int], name: str) -> None:
        """Run `fn` (a reference forward, routed by ``routing()``) up to its first pause in `layers`."""
        self.layers = layers
        worker = self._threads.get(name)
        if worker is None:
            worker = self._threads[name] = Worker(fn, name)
        else:
            worker.submit(fn)
        self._workers.append((worker, routing))
        self._run(worker, routing)

    def pause_here(self, layer: int) -> None:
        """Called before every routed layer: a worker in this thread waits before its lockstep layers."""
        if layer in self.layers:
            for worker, _ in self._workers:
                if worker.is_current():
                    worker.pause(layer)

    def advance(self, layer: int) -> None:
        """The generation enters `layer`: every worker paused at or before it runs that layer."""
        for worker, routing in self._workers:
            while worker.paused_at is not None and worker.paused_at <= layer:
                self._run(worker, routing)

    def _run(self, worker: Worker, routing: Callable[[], Any]) -> None:
        with routing():
            worker.resume()

    def close(self) -> None:
        """End every job (done ones are simply forgotten); the next forward starts afresh on the same threads."""
        workers, self._workers = self._workers, []
        for worker, _ in workers:
            worker.cancel()
        self.layers = frozenset()

    def shutdown(self) -> None:
        """End every job and every thread (the session's end)."""
        self.close()
        threads, self._threads = self._threads, {}
        for worker in threads.values():
            worker.shutdown()

    def __iter__(self) -> Iterator[Worker]:
        return (worker for worker, _ in self._workers)
