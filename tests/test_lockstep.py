"""The reference branch in lockstep with the generation (`fine/lockstep.py`): the same output bit for bit,
one warp layer's reference values held at a time instead of all, and no thread left behind by an error
in either branch or by Ctrl-C."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import generate, hook_count, run

import vwarper_hooks as vwarper
from vwarper_hooks.fine.capture import Branch, Router
from vwarper_hooks.fine.lockstep import Worker
from vwarper_hooks.fine.warping import ValueWarp

STEPS = 6
PROMPT = "a <clock> clock on the beach"


def _workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("vwarper-reference")]


def _spy(monkeypatch) -> list[tuple]:
    """Record, at each generation warp-layer call: (layer, warp layers held, reference layers held, None),
    and at each reference warp-layer call: (layer, None, None, the thread it runs in)."""
    seen: list[tuple] = []
    process = Router.process

    def spying(self: Router, call):
        run_state, route = self.run, self.route
        if route.branch is Branch.GENERATION and call.layer in run_state.plan.warp_layers and run_state.warp:
            seen.append((call.layer, sorted(run_state.warp_values),
                         sum(len(s.ref_values) for s in run_state.subjects), None))
        if route.branch is Branch.REFERENCE and call.layer in run_state.plan.warp_layers:
            seen.append((call.layer, None, None, threading.current_thread().name))
        return process(self, call)

    monkeypatch.setattr(Router, "process", spying)
    return seen


@pytest.mark.parametrize("references", [1, 2])
def test_lockstep_gives_the_same_video_bit_for_bit_holding_one_warp_layer(pipe, clock_image, monkeypatch,
                                                                          references):
    subject = vwarper.Subject.from_images([clock_image] * references, "<clock>", "clock")
    before, _ = generate(pipe, subject, vwarper.WarpConfig(reference_lockstep=False,
                                                                 num_references=references), STEPS, prompt=PROMPT)
    seen = _spy(monkeypatch)
    after, session = generate(pipe, subject, vwarper.WarpConfig(num_references=references), STEPS, prompt=PROMPT)
    assert torch.equal(before, after)
    warp_calls = [s for s in seen if s[3] is None]
    assert warp_calls and sum(session.calls[k] for k in session.calls if k[0] == "warp") == len(warp_calls)
    assert all(held == [layer] and refs == 0 for layer, held, refs, _ in warp_calls)
    assert {name for *_, name in seen if name} == {"vwarper-reference-0"}  # warp layers ran in the worker
    assert _workers() == []


def test_without_lockstep_every_warp_layer_is_held_through_the_forward(pipe, subject, monkeypatch):
    seen = _spy(monkeypatch)
    generate(pipe, subject, vwarper.WarpConfig(reference_lockstep=False), STEPS, prompt=PROMPT)
    warp_calls = [s for s in seen if s[3] is None]
    layers = sorted({layer for layer, *_ in warp_calls})
    assert len(layers) > 1 and all(held == layers for _, held, _, _ in warp_calls)
    assert {name for *_, name in seen if name} == {threading.main_thread().name}


def test_flop_counters_see_the_reference_worker(pipe, subject):
    """torch keeps dispatch modes per thread: the worker enters the caller's, so counts stay whole."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    totals = []
    for lockstep in (False, True):
        with vwarper.inject(pipe, subject, vwarper.WarpConfig(reference_lockstep=lockstep)):
            run(pipe, num_inference_steps=STEPS, prompt=PROMPT)  # the inversion, cached
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                run(pipe, num_inference_steps=STEPS, prompt=PROMPT)
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] > 0


def test_two_subjects_in_lockstep_give_the_same_video(pipe, clock_image):
    dog = vwarper.Subject.from_images([clock_image.rotate(90)], "<dog>", "dog")
    clock = vwarper.Subject.from_images([clock_image], "<clock>", "clock")
    prompt = "a <clock> clock and a <dog> dog"
    outputs = []
    for lockstep in (False, True):
        with vwarper.inject(pipe, [clock, dog], vwarper.WarpConfig(reference_lockstep=lockstep)):
            outputs.append(run(pipe, num_inference_steps=STEPS, prompt=prompt))
    assert torch.equal(*outputs) and _workers() == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_generation_between_warp_layers_leaves_no_worker(pipe, subject, monkeypatch, error):
    stock, hooks = run(pipe, num_inference_steps=STEPS, prompt=PROMPT), hook_count(pipe)
    attend, calls = ValueWarp.attend, []

    def failing(self, call, reference, plan):
        calls.append(call.layer)
        if len(calls) == 2:  # the worker is paused before the next warp layer now
            raise error("stop here")
        return attend(self, call, reference, plan)

    monkeypatch.setattr(ValueWarp, "attend", failing)
    with pytest.raises(error, match="stop here"), vwarper.inject(pipe, subject):
        run(pipe, num_inference_steps=STEPS, prompt=PROMPT)
    assert _workers() == [] and hook_count(pipe) == hooks
    monkeypatch.setattr(ValueWarp, "attend", attend)
    assert torch.equal(run(pipe, num_inference_steps=STEPS, prompt=PROMPT), stock)


def test_an_error_in_the_reference_worker_is_raised_in_the_caller(pipe, subject, monkeypatch):
    reference, seen = Router._reference, []

    def failing(self, call):
        seen.append(call.layer)
        if call.layer in self.run.plan.warp_layers and len([x for x in seen if x in self.run.plan.warp_layers]) == 2:
            raise ValueError("reference broke")
        return reference(self, call)

    monkeypatch.setattr(Router, "_reference", failing)
    with pytest.raises(ValueError, match="reference broke"), vwarper.inject(pipe, subject):
        run(pipe, num_inference_steps=STEPS, prompt=PROMPT)
    assert _workers() == []


def test_a_worker_runs_only_while_its_caller_waits():
    order: list[str] = []
    worker: Worker

    def body() -> None:
        order.append("worker: up to 1")
        worker.pause(1)
        order.append("worker: 1 to 2")
        worker.pause(2)
        order.append("worker: after 2")

    worker = Worker(body, "vwarper-reference-test")
    assert order == [] and worker.paused_at is None
    for expected in (1, 2, None):
        worker.resume()
        order.append(f"main: worker at {expected}")
        assert worker.paused_at == expected
    assert worker.done and order == ["worker: up to 1", "main: worker at 1", "worker: 1 to 2",
                                     "main: worker at 2", "worker: after 2", "main: worker at None"]
    worker.shutdown()


def test_a_cancelled_worker_unwinds_from_its_pause_and_takes_the_callers_grad_mode():
    state: dict[str, object] = {}
    worker: Worker

    def body() -> None:
        state["grad"] = torch.is_grad_enabled()
        try:
            worker.pause(3)
            state["resumed"] = True
        finally:
            state["unwound"] = True

    with torch.no_grad():
        worker = Worker(body, "vwarper-reference-test")
        worker.resume()
    assert worker.paused_at == 3 and state == {"grad": False}
    worker.cancel()
    assert worker.done and state == {"grad": False, "unwound": True}
    worker.shutdown()
    assert _workers() == []


def test_ctrl_c_while_the_worker_runs_waits_for_its_pause_before_unwinding():
    """The main thread interrupted in `resume` must not unwind while the worker still runs a layer."""
    import signal
    import time

    state: dict[str, bool] = {}
    worker: Worker

    def body() -> None:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.2)  # still inside the layer when the main thread sees Ctrl-C
        state["ran to its pause"] = True
        worker.pause(1)
        state["ran past it"] = True

    worker = Worker(body, "vwarper-reference-test")
    with pytest.raises(KeyboardInterrupt):
        worker.resume()
    assert state == {"ran to its pause": True} and worker.paused_at == 1
    worker.cancel()
    assert worker.done and state == {"ran to its pause": True}
    worker.shutdown()
    assert _workers() == []


def test_one_worker_thread_per_subject_serves_every_reference_forward(pipe, subject, monkeypatch):
    started = []
    start = threading.Thread.start

    def counting(self):
        if self.name.startswith("vwarper-reference"):
            started.append(self.name)
        return start(self)

    monkeypatch.setattr(threading.Thread, "start", counting)
    with vwarper.inject(pipe, subject) as session:
        run(pipe, num_inference_steps=STEPS, prompt=PROMPT)
        run(pipe, num_inference_steps=STEPS, prompt=PROMPT)
        lockstep_forwards = sum(1 for (branch, step, layer) in session.calls if branch == "reference"
                                and layer == max(session.config.warp_layers))
    assert lockstep_forwards > 2 and started == ["vwarper-reference-0"]  # one thread for both calls
    assert _workers() == []


def test_a_second_job_reuses_the_thread_and_takes_the_callers_state_anew():
    seen: list[bool] = []
    worker = Worker(lambda: seen.append(torch.is_grad_enabled()), "vwarper-reference-test")
    worker.resume()
    with torch.no_grad():
        worker.submit(lambda: seen.append(torch.is_grad_enabled()))
        worker.resume()
    assert seen == [True, False] and worker.done and _workers() == ["vwarper-reference-test"]
    worker.shutdown()
    assert _workers() == []
