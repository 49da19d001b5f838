"""`inspect_model`: attention modules, norms, rotary, token layout and the claiming adapter, as plain data."""

from __future__ import annotations

import json

import pytest

import vwarper_hooks as vwarper
from vwarper_hooks.porting.inspection import ModelReport, inspect_model
from vwarper_hooks.testing import tiny_wan_transformer


@pytest.mark.parametrize(
    ("family", "layout", "attention", "depth"),
    [
        ("cogvideox", "joint sequence, text tokens [0, 16) then video tokens [16, 24)", 42, 42),
        ("hunyuan_video", "joint sequence, video tokens [0, 8) then text tokens [8, 24)", 7, 6),
        ("wan", "video tokens [0, 8) only; text (16 tokens) via a separate cross-attention", 12, 6),
        ("skyreels_v2", "video tokens [0, 8) only; text (16 tokens) via a separate cross-attention", 12, 6),
        ("ltx_video", "video tokens [0, 8) only; text (16 tokens) via a separate cross-attention", 12, 6),
        ("hunyuan_video15", "joint sequence, video tokens [0, 8) then text tokens [8, 32)", 7, 6),
    ],
)
def test_tiny_models_are_described(family, layout, attention, depth):
    report = inspect_model(tiny=family)
    data = report.to_dict()
    json.dumps(data)  # plain data, ready for any renderer
    assert data["adapter"] == family and data["plugin"] == family and data["depth"] == depth
    assert layout in data["token_layout"]
    assert len(data["attention"]) == attention  # hunyuan: 6 + the text refiner's attention
    flat = [a for a in data["attention"] if a["flat_index"] is not None]
    assert [a["flat_index"] for a in flat] == list(range(depth))
    assert all(a["rotary_used"] and a["rotary_arg"] and a["norm_q"] for a in flat)


def test_hunyuan_and_wan_details():
    hunyuan = inspect_model(tiny="hunyuan_video")
    dual = [a for a in hunyuan.attention if a.flat_index in (0, 1)]
    assert all(a.separate_text_projections and a.norm_q == "RMSNorm" for a in dual)
    assert hunyuan.default_layers == {"match_layer": 2, "warp_layers": [3, 4], "source": "adapter"}
    wan = inspect_model(tiny="wan")
    cross = [a for a in wan.attention if a.cross_attention]
    assert len(cross) == 6 and all(a.name.endswith("attn2") and a.rotary_used is False for a in cross)
    assert inspect_model(tiny="cogvideox").default_layers["match_layer"] == 12


def test_local_directory_is_built_from_config_on_meta(tmp_path):
    tiny_wan_transformer(num_layers=3).save_config(tmp_path / "transformer")  # config only, no weights
    report = inspect_model(str(tmp_path))
    assert isinstance(report, ModelReport)
    assert report.model_class == "WanTransformer3DModel" and report.adapter == "wan" and report.depth == 3
    assert report.attention[0].rotary_arg == "rotary_emb" and report.attention[0].rotary_used is None
    assert "cross-attention" in report.token_layout


def test_unclaimed_model_says_how_to_port(tmp_path):
    from diffusers import AllegroTransformer3DModel  # a family with no adapter (LTX-Video has one now)

    AllegroTransformer3DModel(
        num_layers=1, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, caption_channels=8,
        in_channels=4, out_channels=4, sample_height=8, sample_width=8, sample_frames=5,
    ).save_config(tmp_path)
    report = inspect_model(str(tmp_path))
    assert report.adapter is None and report.plugin is None
    assert "porting.md" in report.notes[0]
    assert any(a.cross_attention for a in report.attention)
    assert "cross-attention" in report.token_layout


def test_bad_arguments_are_explained():
    with pytest.raises(vwarper.VwarperError, match="exactly one of target or tiny"):
        inspect_model()
    with pytest.raises(vwarper.VwarperError, match="Expected tiny to be one of"):
        inspect_model(tiny="sora")
    with pytest.raises(vwarper.VwarperError, match="Expected a diffusers model id or directory"):
        inspect_model("/nonexistent/model/dir")
