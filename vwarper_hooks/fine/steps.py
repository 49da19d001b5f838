"""The step clock: which denoising step a transformer call belongs to, from scheduler state alone.

Step indices are 0-based positions in ``pipe.scheduler.timesteps``. The clock wraps the
scheduler's ``set_timesteps`` (a new run begins at step 0) and ``step`` (the next step begins),
so finding the step never reads a tensor value: no device sync per transformer call, and it
works on the meta device. A transformer call before the first ``set_timesteps``, or after the
run's last ``scheduler.step``, has no step (e.g. a user's own forward between pipeline calls).

Every diffusers denoising loop calls ``scheduler.step`` exactly once per step; CFG run as two
transformer calls (Wan, true-CFG HunyuanVideo) gives two calls with the same step.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch


@contextmanager
def wrap_method(obj: Any, name: str, after: Callable[[tuple, dict], None]) -> Iterator[None]:
    """Call ``after(args, kwargs)`` after every ``obj.name(...)`` for the block; restores exactly what
    was there before (an instance attribute such as someone else's wrapper, or the class method)."""
    original = getattr(obj, name)
    missing = object()
    before = obj.__dict__.get(name, missing)

    @functools.wraps(original)  # pipelines inspect the signature (e.g. for `sigmas`)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        after(args, kwargs)
        return out

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if before is missing:
            delattr(obj, name)  # the instance attribute goes; the class method shows again
        else:
            setattr(obj, name, before)


class StepClock:
    """Counts runs and steps of one scheduler. `current()` is the step of the transformer call now."""

    def __init__(self, scheduler: Any, before_run: Callable[[], Any] | None = None) -> None:
        self.scheduler = scheduler
        self.before_run = before_run  # called at every set_timesteps, before the denoising loop
        self.run = 0  # increases at every set_timesteps
        self.step = 0
        self.num_steps = 0
        self._call: tuple[tuple, dict] = ((), {})  # the last set_timesteps arguments
        self._host: torch.Tensor | None = None

    @contextmanager
    def installed(self) -> Iterator[StepClock]:
        with ExitStack() as stack:
            stack.enter_context(wrap_method(self.scheduler, "set_timesteps", self._on_set_timesteps))
            stack.enter_context(wrap_method(self.scheduler, "step", self._on_step))
            yield self

    def _on_set_timesteps(self, args: tuple, kwargs: dict) -> None:
        self.run += 1
        self.step = 0
        self.num_steps = len(self.scheduler.timesteps)
        self._call, self._host = (args, kwargs), None
        if self.before_run is not None:
            self.before_run()

    def _on_step(self, args: tuple, kwargs: dict) -> None:
        self.step += 1

    def current(self) -> int | None:
        """The step the next transformer call belongs to, or None outside a denoising loop."""
        return self.step if self.run and self.step < self.num_steps else None

    def host_scheduler(self) -> Any:
        """A copy of the scheduler whose timesteps (and sigmas) were set on the CPU with this run's
        arguments: the same values as the pipeline's, readable without a device-to-host copy."""
        args, kwargs = self._call
        bound = inspect.signature(self.scheduler.set_timesteps).bind_partial(*args, **kwargs).arguments
        if "device" in bound:
            bound["device"] = "cpu"
        host = copy.deepcopy(self.scheduler)
        host.__dict__.pop("set_timesteps", None)  # our wrapper must not count this call
        host.__dict__.pop("step", None)
        host.set_timesteps(**bound)
        return host

    def host_timesteps(self) -> torch.Tensor:
        """This run's timesteps on the CPU (computed once per run)."""
        if self._host is None:
            self._host = self.host_scheduler().timesteps.cpu()
        return self._host
