"""The Adapter protocol's defaults: what a new family gets without writing it, and the old signatures' shim."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import vwarper_hooks as vwarper
from vwarper_hooks.contract.adapter import Adapter, call_default
from vwarper_hooks.contract.processors import RoutedProcessor
from vwarper_hooks.testing import tiny_pipeline

REQUIRED = {"matches", "attention_layers", "token_grid"}


class _Stock:
    def __call__(self, attn, x):
        return x


class _Ours(RoutedProcessor):
    def routed(self, attn, x):
        return x


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.processor = _Stock()

    def set_processor(self, processor) -> None:
        self.processor = processor


class _Minimal(Adapter):
    """Only what the protocol requires, plus the processor class."""

    name = "minimal"
    processor = _Ours
    stock_processor = "_Stock"

    def matches(self, transformer):
        return False

    def attention_layers(self, transformer):
        return list(transformer)

    def token_grid(self, transformer, latents):
        return (1, 1, 1)


def test_only_three_methods_are_required():
    assert Adapter.__abstractmethods__ == REQUIRED
    for owner in Adapter.__mro__[:-2]:  # Adapter and its mixins, not ABC / object
        for name, member in vars(owner).items():
            if inspect.isfunction(member) and not name.startswith("_"):
                documented = "Default" in (member.__doc__ or "") or name in REQUIRED
                assert documented, f"{name}: docstring must say its default"


def test_channel_first_video_defaults_normalise_as_the_vae_config_says():
    """The base's encode_video / video_shape: (B, C, F, H, W) latents, the VAE config's mean/std and scaling factor."""
    wan, hunyuan = tiny_pipeline("wan"), tiny_pipeline("hunyuan_video")
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for pipe in (wan, hunyuan):
        adapter = vwarper.get_adapter(pipe.transformer)
        assert "encode_video" not in vars(type(adapter)) and "video_shape" not in vars(type(adapter))
        latents = adapter.encode_video(pipe, video)
        assert latents.shape == (1, 4, 2, 4, 4) and adapter.video_shape(pipe, latents) == (5, 32, 32)
    wan.vae.register_to_config(latents_mean=[1.0] * 4, latents_std=[2.0] * 4)
    raw = wan.vae.encode(video).latent_dist.mode()
    assert torch.equal(vwarper.get_adapter(wan.transformer).encode_video(wan, video), (raw - 1.0) / 2.0)
    raw = hunyuan.vae.encode(video).latent_dist.mode()
    factor = hunyuan.vae.config.scaling_factor
    assert torch.equal(vwarper.get_adapter(hunyuan.transformer).encode_video(hunyuan, video), raw * factor)


def test_default_install_counts_problems_and_reads_kwargs():
    layers = nn.ModuleList([_Attn(), _Attn()])
    stock = [m.processor for m in layers]
    adapter = _Minimal()
    assert adapter.problems(layers) == [] and adapter.is_installed(layers) == 0
    undo = adapter.install(layers, router=None)
    assert adapter.is_installed(layers) == 2 and [m.processor.layer for m in layers] == [0, 1]
    assert adapter.problems(layers) == []  # our own processors are not a problem (an open injection is)
    undo()
    assert [m.processor for m in layers] == stock and adapter.is_installed(layers) == 0
    layers[1].processor = object()
    assert "layer 1 uses object" in adapter.problems(layers)[0]
    kwargs = {"timestep": torch.tensor([3]), "hidden_states": torch.zeros(1)}
    assert adapter.latents(kwargs) is kwargs["hidden_states"]


def test_an_adapter_without_processor_says_what_to_set():
    class NoProcessor(_Minimal):
        processor = None

    layers = nn.ModuleList([_Attn()])
    with pytest.raises(NotImplementedError, match="processor"):
        NoProcessor().install(layers, router=None)
    with pytest.raises(NotImplementedError, match="is_installed"):
        NoProcessor().is_installed(layers)
    assert NoProcessor().problems(layers) == []  # nothing of ours to check


def test_the_old_latents_signature_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match=r"latents\(self, kwargs\)"):

        class Old(_Minimal):
            def latents(self, args, kwargs):
                return kwargs["x"] if "x" in kwargs else args[0]

    assert Old().latents({"x": 5}) == 5

    class New(_Minimal):  # a new-style override with an extra optional argument is left alone
        def latents(self, kwargs, scale=1):
            return kwargs["hidden_states"] * scale

    assert New().latents({"hidden_states": 2}, 3) == 6


def test_standalone_call_defaults_come_from_the_pipeline():
    wan = tiny_pipeline("wan")
    adapter = vwarper.get_adapter(wan.transformer)
    assert adapter.default_size(wan) == (call_default(wan, "height"), call_default(wan, "width")) == (480, 832)
    assert adapter.size_multiple(wan) == 8 * 2  # VAE factor x spatial patch of (1, 2, 2)
    template = adapter.text_template(wan, torch.device("cpu"))["encoder_hidden_states"]
    assert template.shape[1] == call_default(wan, "max_sequence_length") == 512
    latents = torch.zeros(2, 4, 1, 4, 4)
    kwargs = adapter.forward_kwargs(wan, latents, torch.tensor([1, 2]), {"encoder_hidden_states": torch.ones(1, 3, 8)})
    assert kwargs["hidden_states"] is latents and kwargs["encoder_hidden_states"].shape == (2, 3, 8)
    assert kwargs["return_dict"] is False


def test_family_rules_live_in_the_adapters():
    """CogVideoX computes its own RoPE and size; Wan refuses Wan 2.2's second expert itself."""
    cog = tiny_pipeline("cogvideox", num_layers=2)
    adapter = vwarper.get_adapter(cog.transformer)
    assert adapter.default_size(cog) == (32, 32) and adapter.size_multiple(cog) == 16
    kwargs = adapter.forward_kwargs(cog, torch.zeros(1, 1, 4, 4, 4), torch.tensor([1]), {})
    assert "image_rotary_emb" in kwargs and "ofs" not in kwargs
    hunyuan = tiny_pipeline("hunyuan_video")
    kwargs = vwarper.get_adapter(hunyuan.transformer).forward_kwargs(
        hunyuan, torch.zeros(2, 4, 1, 4, 4), torch.tensor([1, 2]), {}
    )
    assert kwargs["guidance"].shape == (2,)
    wan = tiny_pipeline("wan")
    wan.register_to_config(expand_timesteps=True)
    assert any("expand_timesteps" in p for p in vwarper.get_adapter(wan.transformer).pipeline_problems(wan))
    cog.register_to_config(expand_timesteps=True)  # not a rule of the core: other families decide for themselves
    assert adapter.pipeline_problems(cog) == []


def test_the_papers_layers_are_defined_once():
    from vwarper_hooks import adapter, config

    assert (config.PAPER_DEPTH, config.PAPER_MATCH_LAYER, config.PAPER_WARP_LAYERS) == (42, 12, (20, 29))
    fields = vwarper.WarpConfig.model_fields
    assert fields["match_layer"].default is config.PAPER_MATCH_LAYER
    assert fields["warp_layers"].default is config.PAPER_WARP_LAYERS
    assert adapter.PAPER_WARP_LAYERS is config.PAPER_WARP_LAYERS  # imported, not a second copy
