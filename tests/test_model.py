"""COATConfig / COATModel: presets, forward, the n knob, save/load, Auto classes and input errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoConfig, AutoModel

from coat_hf import COATConfig, COATModel
from coat_hf.configuration_coat import default_style_scales
from coat_hf.correspondence import align_features
from coat_hf.encoders import upsample_bilinear_2x
from coat_hf.lpips_weights import VGG16_RELUS, imagenet_normalize, load_vgg16_features
from coat_hf.modeling_coat import mix_latents
from coat_hf.stylegan2 import Upsample, make_kernel, upfirdn2d


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_presets():
    tiny, small, paper = (COATConfig.preset(n) for n in ("tiny", "small", "paper-256"))
    assert (tiny.image_size, small.image_size, paper.image_size) == (64, 128, 256)
    assert paper.style_dim == 512 and paper.decoder_channels == [512, 512, 512, 512, 512, 256, 128]
    assert (tiny.num_modulation_layers, small.num_modulation_layers, paper.num_modulation_layers) == (10, 12, 14)
    assert COATConfig.preset("tiny", image_size=32, decoder_channels=[32, 32, 32, 32]).num_modulation_layers == 8
    with pytest.raises(ValueError, match="unknown preset"):
        COATConfig.preset("huge")


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        COATConfig(image_size=100)
    with pytest.raises(ValueError, match="default_n"):
        COATConfig(default_n=99)
    with pytest.raises(ValueError, match="alignment"):
        COATConfig(alignment="closest")
    with pytest.raises(ValueError, match="alignment_temperature"):
        COATConfig(alignment_temperature=0)
    with pytest.raises(ValueError, match="decoder_channels"):
        COATModel(COATConfig(image_size=64, decoder_channels=[8, 8]))


@pytest.mark.parametrize("change, message", [
    ({"image_size": 65536}, "image_size must be a power of two from 8 to 1024, got 65536"),
    ({"image_size": 2048}, "image_size must be a power of two from 8 to 1024"),
    ({"style_dim": 10**6}, "style_dim must be from 1 to 4096"),
    ({"encoder_channels": [32, 10**5, 96]}, "encoder_channels must be from 1 to 4096"),
    ({"decoder_channels": [96, 96, 64, 48, 0]}, "decoder_channels must be from 1 to 4096"),
    ({"decoder_channels": [96] * 40}, "decoder_channels needs 5 widths"),
    ({"alignment_block_size": 2**40}, "alignment_block_size must be from 1"),
    ({"image_size": "64"}, "image_size must be an integer, got '64'"),
    ({"style_dim": 64.0}, "style_dim must be an integer"),
    ({"encoder_channels": "32,64"}, "encoder_channels must be a non-empty list of integers"),
    ({"default_n": "3"}, "default_n must be an integer"),
    ({"use_alignment": "yes"}, "use_alignment must be true or false"),
    ({"alignment_temperature": "warm"}, "alignment_temperature must be a finite number"),
    ({"modulation_pyramid": "yes"}, "modulation_pyramid must be true or false"),
    ({"noise_mode": 1}, "noise_mode must be a string"),
    ({"match_features": "resnet"}, "match_features must be one of"),
    ({"match_features": "vgg16", "encoder_channels": [8, 8, 8, 8, 8]}, "match_features 'vgg16' covers at most 4"),
    ({"structure_channels": -1}, "structure_channels must be from 0 (off) to 4096, got -1"),
    ({"structure_channels": True}, "structure_channels must be an integer"),
    ({"structure_scale": 3}, "structure_scale must be distinct scales of E in [0, 3) with maps of at least 4x4, got 3"),
    ({"structure_scale": [2, 2]}, "structure_scale must be distinct scales of E in [0, 3)"),
    ({"structure_scale": [2, 5]}, "structure_scale must be distinct scales of E in [0, 3)"),
    ({"structure_scale": "deep"}, "structure_scale must be an integer or a list of integers"),
    ({"structure_scale": []}, "structure_scale must be an integer or a list of integers"),
])
def test_config_json_with_absurd_sizes_or_wrong_types_is_refused_before_allocating(tmp_path, change, message,
                                                                                   monkeypatch):
    """A model folder whose config.json asks for too much, or for the wrong type: a ValueError naming the field,
    and not a byte of the model allocated."""
    COATConfig.preset("tiny").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    monkeypatch.setattr(COATModel, "__init__", lambda *args: pytest.fail("the model was built"))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        AutoModel.from_pretrained(tmp_path)


def test_a_checkpoint_missing_a_weight_is_refused(tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    tiny_model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["decoder.conv1.conv.weight"], weights["latent_avg"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"^the checkpoint lacks 2 of the model's weights \(decoder.conv1.conv.weight, "
                                         r"latent_avg\); they would stay random"):
        AutoModel.from_pretrained(tmp_path)


def test_style_scales_coarse_from_deep():
    scales = default_style_scales(10, 3)
    assert scales[0] == 2 and scales[-1] == 0 and scales == sorted(scales, reverse=True)


def test_forward_shapes(tiny_model, image_pair):
    """(Speed is measured by benchmarks/benchmark_inference.py, not asserted here.)"""
    content, style = image_pair
    with torch.no_grad():
        out = tiny_model(content, style, output_correspondence=True)
    k, d = tiny_model.num_modulation_layers, tiny_model.config.style_dim
    assert out.images.shape == (2, 3, 64, 64)
    assert out.latents.shape == out.content_latents.shape == out.style_latents.shape == (2, k, d)
    assert len(out.correspondences) == tiny_model.config.num_scales
    sizes = [c.content_size for c in out.correspondences]
    assert sizes == [(32, 32), (16, 16), (8, 8)]
    assert [f.shape[-1] for f in tiny_model.encode(content)] == [32, 16, 8]
    images, latents, *_ = tiny_model(content, style, return_dict=False)
    assert images.shape == (2, 3, 64, 64)


def test_n_equal_to_layers_ignores_style(tiny_model, image_pair):
    content, style = image_pair
    k = tiny_model.num_modulation_layers
    with torch.no_grad():
        a = tiny_model(content, style, n=k, generator=seeded()).images
        b = tiny_model(content, style.flip(0), n=k, generator=seeded()).images
        c = tiny_model(content, torch.zeros_like(style), n=k, generator=seeded()).images
        d = tiny_model(content, style, n=0, generator=seeded()).images
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.allclose(a, d)


def test_latent_mixing_takes_first_n_from_content(tiny_model, image_pair):
    content, style = image_pair
    with torch.no_grad():
        out = tiny_model(content, style, n=3)
    assert torch.equal(out.latents[:, :3], out.content_latents[:, :3])
    assert torch.equal(out.latents[:, 3:], out.style_latents[:, 3:])
    c, s = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    assert mix_latents(c, s, 0).eq(1).all() and mix_latents(c, s, 4).eq(0).all()


def test_alignment_switch(tiny_model, image_pair):
    """Without alignment the style latents come from the raw style maps (latent-swapping baseline)."""
    content, style = image_pair
    with torch.no_grad():
        raw = tiny_model(content, style, use_alignment=False).style_latents
        aligned_out = tiny_model(content, style, use_alignment=True)
        expected_raw = tiny_model.style_vectors(tiny_model.encode(style))
        aligned, _ = tiny_model.align(tiny_model.encode(content), tiny_model.encode(style))
        expected_aligned = tiny_model.style_vectors(aligned)
    torch.testing.assert_close(raw, expected_raw)
    torch.testing.assert_close(aligned_out.style_latents, expected_aligned)
    assert not torch.allclose(raw, aligned_out.style_latents)


def test_reconstruction_pair_aligns_to_itself(tiny_model, image_pair):
    """With content = style every position matches itself (or an identical feature), so both latents are equal."""
    content, _ = image_pair
    with torch.no_grad():
        out = tiny_model(content, content, output_correspondence=True)
    torch.testing.assert_close(out.content_latents, out.style_latents)
    assert all(torch.allclose(c.similarity, torch.ones(())) for c in out.correspondences)


def test_seeded_noise_is_reproducible(tiny_model, image_pair):
    content, style = image_pair
    with torch.no_grad():
        a = tiny_model(content, style, generator=seeded(1)).images
        b = tiny_model(content, style, generator=seeded(1)).images
    assert torch.equal(a, b)


def test_save_load_roundtrip(tmp_path, tiny_model, image_pair):
    content, style = image_pair
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "coat"
    loaded = AutoModel.from_pretrained(tmp_path).eval()  # no trust_remote_code needed
    assert isinstance(loaded, COATModel)
    saved, restored = tiny_model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    for name in saved:  # includes blur kernels and noise buffers
        assert torch.equal(saved[name], restored[name]), name
    with torch.no_grad():
        for mode in ("random", "const"):
            tiny_model.config.noise_mode = loaded.config.noise_mode = mode
            a = tiny_model(content, style, generator=seeded()).images
            b = loaded(content, style, generator=seeded()).images
            assert torch.equal(a, b)
    tiny_model.config.noise_mode = "random"


def test_decoder_parameter_names_follow_stylegan2(tiny_model):
    names = set(tiny_model.state_dict())
    for key in ("decoder.input.input", "decoder.conv1.conv.weight", "decoder.conv1.conv.modulation.bias",
                "decoder.conv1.noise.weight", "decoder.conv1.activate.bias", "decoder.to_rgb1.bias",
                "decoder.convs.0.conv.blur.kernel", "decoder.to_rgbs.0.upsample.kernel", "decoder.noises.noise_0"):
        assert key in names, key


@pytest.mark.parametrize(
    "content, message",
    [
        (torch.zeros(1, 1, 64, 64), "content_pixel_values must be"),
        (torch.zeros(1, 3, 32, 32), "resize first"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_inputs(tiny_model, content, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(content, torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("n", [-1, 11, 2.5, True])
def test_bad_n(tiny_model, image_pair, n):
    with pytest.raises(ValueError, match="n must be an integer"):
        tiny_model(*image_pair, n=n)


def test_upfirdn2d_against_direct_convolution():
    """Upsampling by zero insertion then the FIR filter, checked against an explicit transposed scatter."""
    x = torch.randn(1, 2, 5, 5)
    k = make_kernel([1, 3, 3, 1]) * 4
    up = Upsample([1, 3, 3, 1])
    out = up(x)
    assert out.shape == (1, 2, 10, 10)
    zero_inserted = torch.zeros(1, 2, 10, 10)
    zero_inserted[..., ::2, ::2] = x
    padded = torch.nn.functional.pad(zero_inserted, (2, 1, 2, 1))
    ref = torch.zeros_like(out)
    for i in range(10):
        for j in range(10):
            ref[..., i, j] = (padded[..., i : i + 4, j : j + 4] * k.flip(0, 1)).sum((-1, -2))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(upfirdn2d(x, [1.0]), x)


def _upfirdn2d_by_grouped_convolution(x, kernel, up, down, pad):
    """The reference op's definition: zero insertion, padding (negative crops), a depthwise true convolution."""
    b, c, h, w = x.shape
    zero_inserted = x.new_zeros(b, c, h * up, w * up)
    zero_inserted[..., ::up, ::up] = x
    padded = torch.nn.functional.pad(zero_inserted, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1)[None, None].expand(c, 1, *kernel.shape)
    return torch.nn.functional.conv2d(padded, weight, groups=c)[..., ::down, ::down]


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1]])
@pytest.mark.parametrize(("up", "down", "pad"), [(1, 1, (2, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (-1, 2)),
                                                 (2, 2, (1, 0))])
def test_upfirdn2d_equals_the_grouped_convolution(taps, up, down, pad):
    """The shifted-sum filter (separable, the taps as constants) equals the depthwise convolution it replaced,
    on a non-square channels-last input."""
    x = torch.randn(2, 3, 7, 10).to(memory_format=torch.channels_last)
    expected = _upfirdn2d_by_grouped_convolution(x, make_kernel(taps) * 4, up, down, pad)
    torch.testing.assert_close(upfirdn2d(x, taps, up, down, pad, gain=4), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 3, 2, 5), (1, 4, 8, 8)])
def test_upsample_bilinear_2x_equals_interpolate(shape):
    x = torch.randn(shape)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear_2x(x), expected)
    torch.testing.assert_close(upsample_bilinear_2x(x.to(memory_format=torch.channels_last)), expected)


@pytest.mark.parametrize("alignment", ["mutual", "nearest", "soft"])
def test_alignment_rule_and_pyramid_options_round_trip(tmp_path, image_pair, alignment):
    torch.manual_seed(0)
    model = COATModel(COATConfig.preset("tiny", alignment=alignment, modulation_pyramid=True)).eval()
    assert len(model.modulation_encoder.laterals) == model.config.num_scales
    content, style = image_pair
    features = model.encoder(content)
    assert model.style_vectors(features).shape == (2, model.num_modulation_layers, model.config.style_dim)
    model.save_pretrained(tmp_path)
    loaded = COATModel.from_pretrained(tmp_path).eval()
    assert loaded.config.alignment == alignment and loaded.config.modulation_pyramid
    seed = torch.Generator().manual_seed(0)
    a = model(content, style, n=0, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(loaded(content, style, n=0, generator=seed).images, a)
    other = "nearest" if alignment != "nearest" else "mutual"
    b = model(content, style, n=0, alignment=other, generator=torch.Generator().manual_seed(0)).images
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="alignment must be one of"):
        model(content, style, alignment="closest")


def test_vgg16_matching_compares_vgg_maps_moves_encoder_maps_and_round_trips(tmp_path, image_pair):
    """``match_features="vgg16"``: the matches are those of frozen VGG16 maps at E's strides, Eq. 3 moves E's
    features, and the VGG16 weights stay out of the model's weights and files."""
    torch.manual_seed(0)
    model = COATModel(COATConfig.preset("tiny", match_features="vgg16", alignment="nearest")).eval()
    content, style = image_pair
    out = model(content, style, n=0, output_correspondence=True, generator=seeded())
    vgg = load_vgg16_features()
    maps = {}
    for images in (content, style):
        h = imagenet_normalize(images)
        for index, layer in enumerate(vgg[:23]):
            h = layer(h)
            maps.setdefault(index, []).append(h)
    keys = [maps[VGG16_RELUS[name]] for name in ("relu2_2", "relu3_3", "relu4_3")]  # strides 2, 4, 8
    content_features, style_features = model.encoder(content), model.encoder(style)
    for level, (key_pair, matches) in enumerate(zip(keys, out.correspondences)):
        aligned, expected = align_features(content_features[level], style_features[level], rule="nearest",
                                           content_key=key_pair[0], style_key=key_pair[1])
        assert torch.equal(matches.nearest, expected.nearest)
        own = align_features(content_features[level], style_features[level], rule="nearest")[1]
        assert not torch.equal(own.nearest, expected.nearest)  # E's own maps would match elsewhere
    assert not any("vgg" in name or "features" in name for name in model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = COATModel.from_pretrained(tmp_path).eval()
    assert loaded.config.match_features == "vgg16"
    torch.testing.assert_close(loaded(content, style, n=0, generator=seeded()).images, out.images)


def test_a_structure_code_added_to_a_trained_model_starts_at_zero_and_learns(tmp_path, tiny_model, image_pair):
    """``structure_channels`` over weights trained without it (``from_pretrained(..., structure_channels=8)``, what
    ``init_from`` with the override does): the new code starts at zero, so the model decodes exactly as before, its
    weights are the only ones allowed missing, and gradients reach it; once trained, the output follows the content's
    layout at every n, even n = 0."""
    tiny_model.save_pretrained(tmp_path / "plain")
    model = COATModel.from_pretrained(tmp_path / "plain", structure_channels=8)
    content, style = image_pair
    expected = tiny_model(content, style, n=0, generator=seeded()).images
    torch.testing.assert_close(model(content, style, n=0, generator=seeded()).images, expected, rtol=0, atol=0)
    model(content, style, n=0).images.square().mean().backward()
    assert model.structure_codes[0].weight.grad.abs().sum() > 0

    with torch.no_grad():
        model.structure_codes[0].weight.normal_()
    shapes = [code.shape for code in model.structure(model.encode(content))]
    assert shapes == [(2, model.config.decoder_channels[1], 8, 8)]  # the deepest map, 8 x 8, D's width there
    a = model(content, style, n=0, generator=seeded()).images
    assert not torch.allclose(a, expected)
    assert not torch.allclose(model(content.flip(-1), style, n=0, generator=seeded()).images, a)
    model.save_pretrained(tmp_path / "coded")
    loaded = COATModel.from_pretrained(tmp_path / "coded")
    assert (loaded.config.structure_channels, loaded.config.structure_scale) == (8, 2)
    torch.testing.assert_close(loaded(content, style, n=0, generator=seeded()).images, a)


@pytest.mark.parametrize("scale, size", [(0, 32), (1, 16), (2, 8)])
def test_the_structure_code_enters_d_at_its_maps_resolution(image_pair, scale, size):
    model = COATModel(COATConfig.preset("tiny", structure_channels=4, structure_scale=scale))
    (code,) = model.structure(model.encode(image_pair[0]))
    assert code.shape == (2, model.config.decoder_channels[{32: 3, 16: 2, 8: 1}[size]], size, size)
    assert model(*image_pair).images.shape == (2, 3, 64, 64)


def test_structure_codes_at_several_scales_each_enter_d_at_their_resolution(image_pair):
    model = COATModel(COATConfig.preset("tiny", structure_channels=4, structure_scale=[2, 1]))
    codes = model.structure(model.encode(image_pair[0]))
    assert [code.shape for code in codes] == [(2, model.config.decoder_channels[1], 8, 8),
                                              (2, model.config.decoder_channels[2], 16, 16)]
    content, style = image_pair
    expected = model(content, style, n=0, generator=seeded()).images
    with torch.no_grad():
        model.structure_codes[1].weight.normal_()  # only the 16 x 16 code changes: so does the output
    assert not torch.allclose(model(content, style, n=0, generator=seeded()).images, expected)


def test_a_finer_structure_code_added_to_a_coded_model_starts_at_zero(tmp_path, image_pair):
    """``structure_scale=[2, 1]`` over a model saved with one code (``init_from`` with the override): the code it had
    keeps its weights, including from a folder written before the codes became a list (``structure_code.*``), the
    new one starts at zero, so the model decodes exactly as before; a save and load keeps both."""
    from safetensors.torch import load_file, save_file

    model = COATModel(COATConfig.preset("tiny", structure_channels=4, structure_scale=2)).eval()
    with torch.no_grad():
        model.structure_codes[0].weight.normal_()
    model.save_pretrained(tmp_path / "one")
    weights = load_file(tmp_path / "one" / "model.safetensors")
    legacy = {key.replace("structure_codes.0.", "structure_code."): value for key, value in weights.items()}
    save_file(legacy, tmp_path / "one" / "model.safetensors", metadata={"format": "pt"})
    content, style = image_pair
    expected = model(content, style, n=0, generator=seeded()).images

    assert torch.equal(COATModel.from_pretrained(tmp_path / "one").structure_codes[0].weight,
                       model.structure_codes[0].weight)
    two = COATModel.from_pretrained(tmp_path / "one", structure_scale=[2, 1]).eval()
    assert not two.structure_codes[1].weight.any()
    torch.testing.assert_close(two(content, style, n=0, generator=seeded()).images, expected, rtol=0, atol=0)
    with torch.no_grad():
        two.structure_codes[1].weight.normal_()
    two.save_pretrained(tmp_path / "two")
    loaded = COATModel.from_pretrained(tmp_path / "two").eval()
    assert loaded.config.structure_scales == [2, 1]
    torch.testing.assert_close(loaded(content, style, n=0, generator=seeded()).images,
                               two(content, style, n=0, generator=seeded()).images)
