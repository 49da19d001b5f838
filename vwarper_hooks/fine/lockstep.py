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
    """`fn` in a thread that runs only while the main thread waits in `resume` (strict hand-off).

    Inside `fn`, `pause(layer)` hands control back; `resume` runs it on to its next pause or its end.
    """

    def __init__(self, fn: Callable[[], None], name: str) -> None:
        self._fn, self._enter = fn, _caller_state()
        self._turn = threading.Condition()
        self._worker_runs = False
        self._cancelled = False
        self._error: BaseException | None = None
        self.done = False
        #: the layer the worker waits before (None: running, not started or done)
        self.paused_at: int | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        with self._turn:
            self._turn.wait_for(lambda: self._worker_runs)
        try:
            if not self._cancelled:
                with self._enter():
                    self._fn()
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            self._error = exc
        finally:
            with self._turn:
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
        """In the main thread: run the worker to its next pause or its end; raise what it raised."""
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
        """In the main thread: end the worker wherever it is (it unwinds at its next pause) and join it."""
        self._cancelled = True
        with self._turn:
            self._turn.wait_for(lambda: not self._worker_runs)  # a worker still running reaches a pause
            if not self.done:
                self._worker_runs = True
                self._turn.notify_all()
                self._turn.wait_for(lambda: self.done)
        self._thread.join()
        self._error = None

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread


class Lockstep:
    """The paused reference workers of one generation forward, and the layers they pause before."""

    def __init__(self) -> None:
        self._workers: list[tuple[Worker, Callable[[], Any]]] = []  # (worker, its routing context)
        self.layers: frozenset[int] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self._workers)

    def start(self, fn: Callable[[], None], routing: Callable[[], Any], layers: frozenset[int], name: str) -> None:
        """Run `fn` (a reference forward, routed by ``routing()``) up to its first pause in `layers`."""
        self.layers = layers
        worker = Worker(fn, name)
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
        """End every worker (done ones are simply joined); the next forward starts afresh."""
        workers, self._workers = self._workers, []
        for worker, _ in workers:
            worker.cancel()
        self.layers = frozenset()

    def __iter__(self) -> Iterator[Worker]:
        return (worker for worker, _ in self._workers)
