"""Measured memory: the meter itself, and a warm call's extra against the estimate (`benchmarks/memory.py`).

The warm call is measured with the cyclic garbage collector off, so memory kept alive by a reference
cycle (as `AttentionCall`s once were, each with the whole batch's Q/K/V) counts. Margin: the measured
extra may exceed the estimate by 50% (the estimate leaves out small items: the step's scalars, the
foreground score's per-layer softmax temporaries below the layer's own peak). Measured on this shape:
0.10 MiB against an estimate of 0.17 MiB; before the cycle fix it was 3.13 MiB.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

from vwarper_hooks.porting.memory import PeakTensorMemory, measure_peak

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory as memory_benchmark  # noqa: E402

MiB = 2**20
MARGIN = 1.5


def test_the_meter_sees_peaks_frees_views_and_cycles():
    weights = torch.ones(1024)

    def run() -> None:
        a = torch.zeros(MiB // 4)  # 1 MiB
        b = torch.zeros(MiB // 2)  # 2 MiB, both alive: 3 MiB
        del a, b
        view = weights.t()  # a view of a storage made before: not counted
        c = torch.zeros(MiB // 4) + view.sum()  # 1 MiB (plus a scalar)
        del c

    assert measure_peak(run) == {"peak": 3 * MiB, "left": 0}

    class Holder:
        pass

    def cycle() -> None:
        h = Holder()
        h.self, h.tensor = h, torch.zeros(MiB // 4)

    assert measure_peak(cycle)["left"] >= MiB  # a cycle holds its tensor while the collector is off
    gc.collect()


def test_the_meter_sees_worker_threads_that_enter_its_mode():
    import threading

    meter = PeakTensorMemory()
    done = []

    def work() -> None:
        with meter:
            done.append(torch.zeros(MiB // 4))

    with meter:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert meter.peak == MiB and meter.live == MiB
    done.clear()
    assert meter.live == 0


@pytest.fixture(scope="module")
def small():
    shape = memory_benchmark.SHAPES["small"]
    return shape, memory_benchmark.measure(shape), memory_benchmark.estimate(shape)


def test_a_warm_call_holds_no_more_than_the_estimate(small):
    shape, measured, estimated = small
    extra = measured["warm"]["peak"] - measured["plain"]["peak"]
    print("\n".join(memory_benchmark.table(shape, measured, estimated)))
    assert extra <= MARGIN * estimated, f"warm extra {extra / MiB:.3f} MiB > {MARGIN} x estimate {estimated / MiB:.3f}"


def test_nothing_of_a_call_outlives_it_but_the_inversion_cache(small):
    _, measured, _ = small
    assert measured["plain"]["left"] == 0
    assert measured["warm"]["left"] == 0 and measured["cached"]["left"] == 0
    assert 0 < measured["cold"]["left"] < 0.1 * measured["cold"]["peak"]  # the trajectory kept on the subject
