"""Measured memory on any device: the peak bytes of tensor storages a call creates and keeps alive.

`PeakTensorMemory` is a `TorchDispatchMode`: every operator's outputs are seen as they are made, and
each new storage is counted until it is freed (a weak reference on the storage object, which torch
keeps alive exactly as long as the storage itself). Storages that existed before the block (weights,
the caller's inputs) are not counted. Threads that enter the caller's torch modes (the lockstep
reference worker does) are seen too. Run it with the cyclic garbage collector off (`no_gc`) to see
what a reference cycle would hold until the collector happens to run. On CUDA,
``torch.cuda.max_memory_allocated`` says the same thing with the allocator's rounding.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """Counts live bytes of the storages created inside the block; `peak` is their maximum, `live` what is left."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, int] = {}
        self._lock = threading.Lock()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                if id(storage) not in inputs:  # a view or an in-place result shares an input's storage
                    self._track(storage)
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        with self._lock:
            if key in self._sizes:
                return
            size = storage.nbytes()
            self._sizes[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        with self._lock:
            self.live -= self._sizes.pop(key, 0)


@contextmanager
def no_gc() -> Iterator[None]:
    """The block with the cyclic garbage collector off (collected once, before and after)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def measure_peak(run: Callable[[], Any], keep_result: bool = False) -> dict[str, int]:
    """{"peak": bytes at the peak, "left": bytes still alive after `run()` returned and its result was dropped}.

    The garbage collector is off for the whole measurement, so memory held by a reference cycle counts.
    """
    with no_gc():
        meter = PeakTensorMemory()
        with meter:
            result = run()
        if not keep_result:
            del result
        return {"peak": meter.peak, "left": meter.live}
