"""The full-size cost model (`benchmarks/cost.py`) is exact, and stays runnable.

`cost.py` prices a 50-step call from ONE short call per variant: FLOPs attributed to parts while it
runs, each kind of work then multiplied by how often `StepPlan` says it occurs. Here the very same
code (`measure_shape`, with the tiny configs of `--config tiny`) composes a longer run of each tiny
family on the meta device, and real calls of that length are counted end to end with
`FlopCounterMode`, variant by variant and part by part: the composition must match exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cost  # noqa: E402
from cost_configs import _mask_checks, meta_pipeline, meta_shims, tiny_shapes  # noqa: E402

SHAPES = {shape.family: shape for shape in tiny_shapes()}  # parametrized by family: the family list
WITH_OPTIONS = "cogvideox"  # the fg_softmax / head_combine calls, as the full run makes them for its first shape


def _mask_checks_in_masking_utils() -> bool:
    return any(getattr(owner, "__name__", "") == "transformers.masking_utils" for owner, _ in _mask_checks())


@pytest.fixture(scope="module", params=list(SHAPES))
def composed(request) -> cost.ShapeResult:
    if request.param == "hunyuan_video" and not _mask_checks_in_masking_utils():
        pytest.skip("transformers before 4.53: its Llama text encoder cannot run on the meta device "
                    "(torch.autocast('meta') in the rotary embedding)")
    return cost.measure_shape(SHAPES[request.param], options=request.param == WITH_OPTIONS)


def test_composition_equals_the_end_to_end_count(composed):
    shape = composed.shape
    with meta_shims():
        pipe = meta_pipeline(shape)
        real = cost.measure_variants(pipe, shape, shape.steps, shape.warp_steps, shape.steps,
                                     options=shape.family == WITH_OPTIONS)
    assert set(real) == set(composed.parts)
    for variant, measured in real.items():
        parts = dict(composed.parts[variant])
        parts["VAE"] -= 0 if variant in cost.ONE_OFF else composed.decode  # the decode is counted apart
        difference = {p: parts[p] - v for p, v in measured.parts().items() if parts[p] != v}
        assert not difference, f"{shape.name}, {variant}: composed - counted = {difference}"
        assert sum(parts.values()) == measured.total
    assert composed.total("warm") > composed.total("cached") > composed.total("plain")
    assert composed.total("cold") > composed.total("warm") == composed.total("prepared")


def test_the_report_prints_every_variant_part_and_target(composed):
    text = cost.report([composed], "tiny")
    for name in (*cost.VARIANTS, *cost.ONE_OFF, *cost.PARTS, "x plain", "prepared first call = warm"):
        assert name in text
    assert "V-Warper: = extra at the peak" in text and "feature cache: on device" in text
    assert composed.memory["weights"] > 0 and composed.memory["activations"] > 0
    if composed.shape.family == WITH_OPTIONS:
        assert 'fg_softmax "text" - "joint"' in text and 'head_combine "logits" - "probs"' in text


def test_command_line(composed, monkeypatch, capsys):
    def measure_all(config, indices, blocks, jobs):  # the fixture's measurement stands in for a second one
        assert (config, [SHAPES[n] for n in SHAPES].index(composed.shape) in indices, blocks) == ("tiny", True, 1)
        return [composed]

    monkeypatch.setattr(cost, "measure_all", measure_all)
    assert cost.main(["--config", "tiny", "--only", composed.shape.name]) == 0
    out = capsys.readouterr().out
    assert "--config tiny" in out and f"== {composed.shape.name}" in out and "peak memory" in out


def test_the_meta_shims_leave_torch_as_it_was():
    import torch

    checks = _mask_checks()
    assert checks, "transformers has a mask-skipping check to shim"

    def state() -> tuple:
        return torch._C._dispatch_dump("aten::native_layer_norm"), [vars(owner)[n] for owner, n in checks]

    before = state()
    with meta_shims():
        x = torch.empty(2, 3, device="meta", dtype=torch.bfloat16)
        out, mean, rstd = torch.ops.aten.native_layer_norm(x, [3], None, None, 1e-5)
        assert "cost_configs.py" in torch._C._dispatch_dump("aten::native_layer_norm")
        assert all(getattr(owner, n)(None) is False for owner, n in checks)
    assert out.shape == x.shape and mean.shape == rstd.shape == (2, 1) and mean.dtype == torch.float32
    assert state() == before


def test_the_memory_table_shows_each_shapes_own_items():
    """Shapes in lockstep and shapes holding every warp layer itemise differently: one table, '-' where absent."""
    from types import SimpleNamespace

    def result(name: str, items: dict[str, int]) -> SimpleNamespace:
        memory = {"weights": 8 * 2**20, "activations": 2**20, "inputs": 0, **items, "= extra at the peak": 2**19}
        return SimpleNamespace(shape=SimpleNamespace(name=name), memory=memory, cache=(0, 0),
                               config=SimpleNamespace(feature_cache_device_gib=4.0))

    lines = cost.memory_table([result("A", {"one layer": 2**20, "both": 0}), result("B", {"every layer": 2**21,
                                                                                         "both": 0})])
    rows = {line.split("  ")[0]: line.split() for line in lines}
    order = [line.split("  ")[0] for line in lines]
    assert order.index("V-Warper: every layer") < order.index("V-Warper: both")
    assert rows["V-Warper: one layer"][-2:] == ["1.0", "-"]
    assert rows["V-Warper: every layer"][-2:] == ["-", "2.0"]


def test_each_shape_is_printed_as_soon_as_it_is_done_and_shape_picks_one(composed, monkeypatch, capsys):
    seen: list[str] = []

    def measure_all(config, indices, blocks, jobs):
        assert indices == [list(SHAPES).index(composed.shape.family)]  # --shape picks exactly one
        composed.seconds = 1.5
        yield composed
        seen.append(capsys.readouterr().out)  # what was printed before the next shape would start

    monkeypatch.setattr(cost, "measure_all", measure_all)
    assert cost.main(["--config", "tiny", "--shape", composed.shape.name]) == 0
    assert f"== {composed.shape.name}: measured in 2 s" in seen[0] and "x plain" in seen[0]
    with pytest.raises(SystemExit):
        cost.main(["--config", "tiny", "--shape", "CogVideoX-5B 25f"])  # a full shape with --config tiny
