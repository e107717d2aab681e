"""Importing pretrained StyleGAN2 generators (rosinality .pt, NVlabs .pkl) as COAT's frozen decoder.

Nothing is downloaded: each test builds a checkpoint with random weights in the original key layout and
shapes, converts it, and compares COAT's decoder with a reference synthesis written here from the
StyleGAN2 equations in each format's own conventions (modulation, demodulation, up-sampling
convolution with the FIR filter, noise, bias, leaky ReLU·sqrt(2), ToRGB skips).
"""

from __future__ import annotations

import argparse
import copyreg
import importlib.util
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import make_shape_image
from torch import Tensor, nn

from coat_hf import COATConfig, COATModel
from coat_hf.training.arguments import parse_arguments
from coat_hf.training.trainer import Trainer
from coat_hf.convert_stylegan2 import (
    PAPER_TRAIN_CONFIG,
    UnsafePickleError,
    coat_config_for,
    convert_checkpoint,
    load_decoder,
    load_network_pickle,
    main,
    nvlabs_to_coat,
    read_stylegan2_checkpoint,
)

SIZE, STYLE_DIM, CHANNELS = 32, 16, [24, 24, 16, 8]  # widths at 4, 8, 16, 32 px
K = 2 * int(math.log2(SIZE)) - 2  # 8 modulation layers
N_MLP = 8
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# Reference synthesis from the equations (independent of coat_hf.stylegan2).


def fir_filter() -> Tensor:
    """The [1, 3, 3, 1] low-pass filter, normalised to sum 1."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[:, None] * k[None, :]
    return k / k.sum()


def equal_linear(x: Tensor, weight: Tensor, bias: Tensor, lr_mul: float = 1.0) -> Tensor:
    """y = x (lr_mul·W / sqrt(in))ᵀ + lr_mul·b (equalised learning rate)."""
    return x @ (weight * lr_mul / math.sqrt(weight.shape[1])).T + bias * lr_mul


def lrelu(x: Tensor, bias: Tensor, clamp: float | None = None) -> Tensor:
    """Bias, leaky ReLU (0.2) and gain sqrt(2), optionally clipped to ±clamp."""
    x = F.leaky_relu(x + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    return x if clamp is None else x.clamp(-clamp, clamp)


def modulate(weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor:
    """StyleGAN2 Eq. 1-3: w'_ijk = s_i·w_ijk, then w'' = w' / sqrt(Σ w'² + 1e-8). (O,I,k,k), (B,I) -> (B,O,I,k,k)."""
    w = weight[None] * styles[:, None, :, None, None]
    return w * torch.rsqrt(w.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8) if demodulate else w


def zero_insert(x: Tensor) -> Tensor:
    """2x up-sampling by zero insertion: x at even positions. (B,C,H,W) -> (B,C,2H,2W)."""
    out = x.new_zeros(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])
    out[:, :, ::2, ::2] = x
    return out


def fir(x: Tensor, f: Tensor, pad: tuple[int, int]) -> Tensor:
    """Pad (before, after), then filter every channel with f (true convolution, 'valid')."""
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, f.flip(0, 1)[None, None].repeat(x.shape[1], 1, 1, 1), groups=x.shape[1])


def conv_per_sample(x: Tensor, weights: Tensor, padding: int, true_convolution: bool = False) -> Tensor:
    """Each sample with its own (O,I,k,k) weights; correlation (F.conv2d) unless ``true_convolution``."""
    if true_convolution:
        weights = weights.flip(3, 4)
    return torch.cat([F.conv2d(x[b : b + 1], weights[b], padding=padding) for b in range(x.shape[0])])


def upsample_rgb(img: Tensor, f: Tensor) -> Tensor:
    """The RGB skip path: zero insertion, then the filter with gain 4, output 2H."""
    return fir(zero_insert(img), f * 4, (2, 1))


def rosinality_reference(sd: dict[str, Tensor], latents: Tensor, noise: list[Tensor]) -> Tensor:
    """rosinality's conventions: fan-in gain on the weight before modulation, up-sampling as a stride-2
    transposed convolution (each input pixel scatters the kernel) followed by the blur."""

    def styled(prefix: str, x: Tensor, w: Tensor, noise_map: Tensor, up: bool) -> Tensor:
        weight = sd[f"{prefix}.conv.weight"][0]
        s = equal_linear(w, sd[f"{prefix}.conv.modulation.weight"], sd[f"{prefix}.conv.modulation.bias"])
        mw = modulate(weight / math.sqrt(weight[0].numel()), s, demodulate=True)
        if up:  # transposed conv = zero insertion + full true convolution (2H+1), then blur with pads (1, 1)
            x = zero_insert(x)[:, :, :-1, :-1]
            x = conv_per_sample(x, mw, padding=2, true_convolution=True)
            x = fir(x, fir_filter() * 4, (1, 1))
        else:
            x = conv_per_sample(x, mw, padding=1)
        return lrelu(x + sd[f"{prefix}.noise.weight"] * noise_map, sd[f"{prefix}.activate.bias"])

    def rgb(prefix: str, x: Tensor, w: Tensor, skip: Tensor | None) -> Tensor:
        weight = sd[f"{prefix}.conv.weight"][0]
        s = equal_linear(w, sd[f"{prefix}.conv.modulation.weight"], sd[f"{prefix}.conv.modulation.bias"])
        y = conv_per_sample(x, modulate(weight / math.sqrt(weight.shape[1]), s, False), 0) + sd[f"{prefix}.bias"]
        return y if skip is None else y + upsample_rgb(skip, fir_filter())

    x = sd["input.input"].expand(latents.shape[0], -1, -1, -1)
    x = styled("conv1", x, latents[:, 0], noise[0], up=False)
    img = rgb("to_rgb1", x, latents[:, 1], None)
    for k in range(len(CHANNELS) - 1):
        x = styled(f"convs.{2 * k}", x, latents[:, 2 * k + 1], noise[2 * k + 1], up=True)
        x = styled(f"convs.{2 * k + 1}", x, latents[:, 2 * k + 2], noise[2 * k + 2], up=False)
        img = rgb(f"to_rgbs.{k}", x, latents[:, 2 * k + 3], img)
    return img


def nvlabs_reference(sd: dict[str, Tensor], ws: Tensor, noise: list[Tensor], conv_clamp: float | None) -> Tensor:
    """NVlabs' conventions: unscaled conv weights (demodulation normalises), styles scaled by 1/sqrt(C) in
    ToRGB, and up-sampling as "zero insertion, pad once (3, 2), filter, then true convolution"."""

    def layer(prefix: str, x: Tensor, w: Tensor, noise_map: Tensor, up: bool) -> Tensor:
        styles = equal_linear(w, sd[f"{prefix}.affine.weight"], sd[f"{prefix}.affine.bias"])
        mw = modulate(sd[f"{prefix}.weight"], styles, demodulate=True)
        if up:
            x = fir(zero_insert(x), sd[f"{prefix}.resample_filter"] * 4, (3, 2))
            x = conv_per_sample(x, mw, padding=0, true_convolution=True)
        else:
            x = conv_per_sample(x, mw, padding=1)
        return lrelu(x + sd[f"{prefix}.noise_strength"] * noise_map, sd[f"{prefix}.bias"], conv_clamp)

    def torgb(prefix: str, x: Tensor, w: Tensor) -> Tensor:
        weight = sd[f"{prefix}.weight"]
        styles = equal_linear(w, sd[f"{prefix}.affine.weight"], sd[f"{prefix}.affine.bias"])
        styles = styles / math.sqrt(weight.shape[1])
        y = conv_per_sample(x, modulate(weight, styles, False), 0) + sd[f"{prefix}.bias"].view(1, -1, 1, 1)
        return y if conv_clamp is None else y.clamp(-conv_clamp, conv_clamp)

    x = sd["synthesis.b4.const"][None].repeat(ws.shape[0], 1, 1, 1)
    img, i = None, 0
    for res in [4 * 2**j for j in range(len(CHANNELS))]:
        block = f"synthesis.b{res}"
        if res > 4:
            x = layer(f"{block}.conv0", x, ws[:, i], noise[i], up=True)
            i += 1
        x = layer(f"{block}.conv1", x, ws[:, i], noise[i], up=False)
        i += 1
        if img is not None:
            img = upsample_rgb(img, sd[f"{block}.resample_filter"])
        y = torgb(f"{block}.torgb", x, ws[:, i])
        img = y if img is None else img + y
    return img


def noise_resolutions() -> list[int]:
    return [2 ** ((i + 5) // 2) for i in range(K - 1)]


def random_inputs(seed: int = 1) -> tuple[Tensor, list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, K, STYLE_DIM, generator=g)
    return latents, [torch.randn(2, 1, r, r, generator=g) for r in noise_resolutions()]


# ---------------------------------------------------------------------------------------------------
# Fake checkpoints in the original layouts.


def rosinality_state(seed: int = 0) -> dict[str, Tensor]:
    """A rosinality ``Generator.state_dict()`` for SIZE/STYLE_DIM/CHANNELS with random weights."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=g) * scale + shift

    sd: dict[str, Tensor] = {}
    for i in range(1, N_MLP + 1):
        sd[f"style.{i}.weight"] = rnd(STYLE_DIM, STYLE_DIM, scale=100.0)  # N(0, 1/lr_mul²), lr_mul 0.01
        sd[f"style.{i}.bias"] = rnd(STYLE_DIM, scale=10.0)
    sd["input.input"] = rnd(1, CHANNELS[0], 4, 4)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        sd[f"{prefix}.conv.weight"] = rnd(1, cout, cin, 3, 3)
        sd[f"{prefix}.conv.modulation.weight"] = rnd(cin, STYLE_DIM)
        sd[f"{prefix}.conv.modulation.bias"] = rnd(cin, scale=0.2, shift=1.0)
        if up:
            sd[f"{prefix}.conv.blur.kernel"] = fir_filter() * 4
        sd[f"{prefix}.noise.weight"] = rnd(1, scale=0.3)
        sd[f"{prefix}.activate.bias"] = rnd(cout, scale=0.2)

    def rgb(prefix: str, cin: int, up: bool) -> None:
        if up:
            sd[f"{prefix}.upsample.kernel"] = fir_filter() * 4
        sd[f"{prefix}.conv.weight"] = rnd(1, 3, cin, 1, 1)
        sd[f"{prefix}.conv.modulation.weight"] = rnd(cin, STYLE_DIM)
        sd[f"{prefix}.conv.modulation.bias"] = rnd(cin, scale=0.2, shift=1.0)
        sd[f"{prefix}.bias"] = rnd(1, 3, 1, 1, scale=0.2)

    styled("conv1", CHANNELS[0], CHANNELS[0], up=False)
    rgb("to_rgb1", CHANNELS[0], up=False)
    for k, (cin, cout) in enumerate(zip(CHANNELS[:-1], CHANNELS[1:])):
        styled(f"convs.{2 * k}", cin, cout, up=True)
        styled(f"convs.{2 * k + 1}", cout, cout, up=False)
        rgb(f"to_rgbs.{k}", cout, up=True)
    for i, r in enumerate(noise_resolutions()):
        sd[f"noises.noise_{i}"] = rnd(1, 1, r, r)
    return sd


def rosinality_mapping_mean(sd: dict[str, Tensor], num_samples: int = 10_000, seed: int = 0) -> Tensor:
    """w̄ from the equations: PixelNorm, then 8 x (equalised linear, lr_mul 0.01, leaky ReLU·sqrt 2)."""
    z = torch.randn(num_samples, STYLE_DIM, generator=torch.Generator().manual_seed(seed))
    x = z / torch.sqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, N_MLP + 1):
        x = F.leaky_relu(equal_linear(x, sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], 0.01), 0.2) * math.sqrt(2)
    return x.mean(dim=0)


def write_rosinality(path: Path, sd: dict[str, Tensor], latent_avg: Tensor | None) -> Path:
    checkpoint = {"g_ema": sd, "args": argparse.Namespace(size=SIZE, latent=STYLE_DIM, n_mlp=N_MLP)}
    if latent_avg is not None:
        checkpoint["latent_avg"] = latent_avg
    torch.save(checkpoint, path)
    return path


# NVlabs network objects, rebuilt minimally with the original attribute, parameter and buffer names.
# They pickle either as torch_utils.persistence records (what NVlabs snapshots hold, with source code
# that must never run) or as plain classes of a `training.networks` module.


def _reconstruct_persistent_obj(meta: dict) -> None:
    raise AssertionError("the converter must never call NVlabs' persistence loader")


class EasyDict(dict):
    """dnnlib.util.EasyDict (as found in the networks' recorded init kwargs)."""


class _Net(nn.Module):
    route = "persistent"
    module_src = ""

    def __reduce__(self):
        state = self.__getstate__()
        if self.route == "persistent":
            meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(self).__name__,
                        state=state)
            return _reconstruct_persistent_obj, (meta,)
        return copyreg.__newobj__, (type(self),), state


class FullyConnectedLayer(_Net):
    def __init__(self, g: torch.Generator, cin: int, cout: int, lr_multiplier: float = 1.0, bias_init: float = 0.0,
                 activation: str = "linear") -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(cout, cin, generator=g) / lr_multiplier)
        self.bias = nn.Parameter(bias_init + 0.2 * torch.randn(cout, generator=g))
        self.weight_gain = np.float64(lr_multiplier / np.sqrt(cin))
        self.bias_gain = lr_multiplier


class SynthesisLayer(_Net):
    def __init__(self, g: torch.Generator, cin: int, cout: int, resolution: int, up: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, True, "lrelu"
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", fir_filter())
        self.padding, self.act_gain = 1, np.float64(np.sqrt(2))
        self.affine = FullyConnectedLayer(g, STYLE_DIM, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3, generator=g))
        self.register_buffer("noise_const", torch.randn(resolution, resolution, generator=g))
        self.noise_strength = nn.Parameter(0.3 * torch.randn([], generator=g))
        self.bias = nn.Parameter(0.2 * torch.randn(cout, generator=g))


class ToRGBLayer(_Net):
    def __init__(self, g: torch.Generator, cin: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(g, STYLE_DIM, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, cin, 1, 1, generator=g))
        self.bias = nn.Parameter(0.2 * torch.randn(3, generator=g))
        self.weight_gain = np.float64(1 / np.sqrt(cin))


class SynthesisBlock(_Net):
    def __init__(self, g: torch.Generator, cin: int, cout: int, resolution: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.architecture, self.is_last = cin, resolution, "skip", resolution == SIZE
        self.register_buffer("resample_filter", fir_filter())
        if cin == 0:
            self.const = nn.Parameter(torch.randn(cout, resolution, resolution, generator=g))
        else:
            self.conv0 = SynthesisLayer(g, cin, cout, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(g, cout, cout, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(g, cout, conv_clamp=conv_clamp)


class SynthesisNetwork(_Net):
    def __init__(self, g: torch.Generator, conv_clamp: float | None) -> None:
        super().__init__()
        self.block_resolutions = [4 * 2**i for i in range(len(CHANNELS))]
        for i, res in enumerate(self.block_resolutions):
            setattr(self, f"b{res}", SynthesisBlock(g, CHANNELS[i - 1] if i else 0, CHANNELS[i], res, conv_clamp))


class MappingNetwork(_Net):
    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        for i in range(N_MLP):
            layer = FullyConnectedLayer(g, STYLE_DIM, STYLE_DIM, lr_multiplier=0.01, activation="lrelu")
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.randn(STYLE_DIM, generator=g))


class Generator(_Net):
    def __init__(self, seed: int, conv_clamp: float | None = 256) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.z_dim = self.w_dim = STYLE_DIM
        self.c_dim, self.img_resolution, self.img_channels, self.num_ws = 0, SIZE, 3, K
        self.synthesis = SynthesisNetwork(g, conv_clamp)
        self.mapping = MappingNetwork(g)
        self._init_args = ()
        self._init_kwargs = dict(z_dim=STYLE_DIM, mapping_kwargs=EasyDict(num_layers=N_MLP),
                                 synthesis_kwargs=EasyDict(channel_base=16384, conv_clamp=conv_clamp))


@contextmanager
def fake_modules(**modules: dict[str, object]):
    """Make ``module.attr`` names importable while pickling (pickle checks each global), then remove them."""
    packages = {name.rpartition(".")[0] for name in modules} - {""}
    saved = {name: sys.modules.get(name) for name in (*packages, *modules)}
    try:
        for name in packages:
            sys.modules[name] = types.ModuleType(name)
        for name, attrs in modules.items():
            module = types.ModuleType(name)
            for key, value in attrs.items():
                setattr(module, key, value)
                value.__module__, value.__qualname__ = name, key
            sys.modules[name] = module
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_nvlabs(path: Path, g_ema: Generator, route: str = "persistent", module_src: str = "") -> Path:
    """An NVlabs snapshot pickle: G, D, G_ema, augment_pipe, training_set_kwargs."""
    classes = {c.__name__: c for c in (FullyConnectedLayer, SynthesisLayer, ToRGBLayer, SynthesisBlock,
                                        SynthesisNetwork, MappingNetwork, Generator)}
    snapshot = dict(training_set_kwargs=dict(path="afhq.zip", resolution=SIZE, use_labels=False), G=Generator(seed=7),
                    D=FullyConnectedLayer(torch.Generator().manual_seed(3), 4, 1), G_ema=g_ema, augment_pipe=None)
    old = (_Net.route, _Net.module_src)
    _Net.route, _Net.module_src = route, module_src
    try:
        with fake_modules(**{"torch_utils.persistence": dict(_reconstruct_persistent_obj=_reconstruct_persistent_obj),
                             "dnnlib.util": dict(EasyDict=EasyDict), "training.networks": classes}):
            path.write_bytes(pickle.dumps(snapshot, protocol=3 if route == "persistent" else pickle.DEFAULT_PROTOCOL))
    finally:
        _Net.route, _Net.module_src = old
    return path


# ---------------------------------------------------------------------------------------------------
# Equivalence.


@pytest.fixture(scope="module")
def rosinality_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[COATModel, dict[str, Tensor], Tensor]:
    tmp = tmp_path_factory.mktemp("rosinality")
    sd, latent_avg = rosinality_state(), torch.randn(STYLE_DIM)
    convert_checkpoint(write_rosinality(tmp / "g.pt", sd, latent_avg), tmp / "coat", encoder_channels=[8, 16])
    return COATModel.from_pretrained(tmp / "coat").eval(), sd, latent_avg


def test_rosinality_decoder_equals_reference_synthesis(rosinality_model) -> None:
    model, sd, latent_avg = rosinality_model
    latents, noise = random_inputs()
    with torch.no_grad():
        ours = model.decoder(latents, noise)
        ours_const = model.decoder(latents)  # the checkpoint's fixed noise maps
    assert ours.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(ours, rosinality_reference(sd, latents, noise), atol=1e-4, rtol=1e-4)
    const = [sd[f"noises.noise_{i}"] for i in range(K - 1)]
    torch.testing.assert_close(ours_const, rosinality_reference(sd, latents, const), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.latent_avg, latent_avg)
    assert model.config.image_size == SIZE and model.config.decoder_channels == CHANNELS
    assert model.config.style_dim == STYLE_DIM and model.num_modulation_layers == K


def test_rosinality_average_latent_from_mapping_network(tmp_path: Path) -> None:
    sd = rosinality_state(seed=2)
    generator = read_stylegan2_checkpoint(write_rosinality(tmp_path / "g.pt", sd, latent_avg=None))
    torch.testing.assert_close(generator.latent_avg, rosinality_mapping_mean(sd), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("route", ["persistent", "plain"])
def test_nvlabs_decoder_equals_reference_synthesis(tmp_path: Path, route: str) -> None:
    g_ema = Generator(seed=5)
    sd = {k: v.detach() for k, v in g_ema.state_dict().items()}
    convert_checkpoint(write_nvlabs(tmp_path / "network-snapshot.pkl", g_ema, route), tmp_path / "coat",
                       encoder_channels=[8, 16])
    model = COATModel.from_pretrained(tmp_path / "coat").eval()
    latents, noise = random_inputs(seed=3)
    with torch.no_grad():
        ours, ours_const = model.decoder(latents, noise), model.decoder(latents)
    torch.testing.assert_close(ours, nvlabs_reference(sd, latents, noise, conv_clamp=256), atol=1e-4, rtol=1e-4)
    const = [sd[name][None, None] for name in sorted(
        (k for k in sd if k.endswith("noise_const")), key=lambda k: (int(k.split(".")[1][1:]), k))]
    torch.testing.assert_close(ours_const, nvlabs_reference(sd, latents, const, conv_clamp=256), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.latent_avg, sd["mapping.w_avg"])  # G_ema's, not G's


# ---------------------------------------------------------------------------------------------------
# Safety of the NVlabs reader.


class _Command:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_nvlabs_source_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    data = load_network_pickle(write_nvlabs(tmp_path / "g.pkl", Generator(seed=1), module_src=src))
    assert not marker.exists()
    assert data["G_ema"].qualified_name == "persistent:Generator"
    assert data["G_ema"].state["_init_kwargs"]["mapping_kwargs"] == {"num_layers": N_MLP}


@pytest.mark.parametrize("payload", [
    lambda marker: _Command(os.system, f"touch {marker}"),
    lambda marker: _Command(eval, f"open({str(marker)!r}, 'w')"),
    lambda marker: {"G_ema": _Command(torch.storage._load_from_bytes,
                                      pickle.dumps(_Command(os.system, f"touch {marker}"), protocol=2))},
], ids=["os.system", "builtins.eval", "storage-bytes"])
def test_nvlabs_reader_refuses_foreign_globals(tmp_path: Path, payload) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(UnsafePickleError, match="system|eval|not plain tensor data"):
        read_stylegan2_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# Mismatches and the CLI.


def test_mismatched_preset_or_model_is_refused(tmp_path: Path, rosinality_model, capsys) -> None:
    path = write_rosinality(tmp_path / "g.pt", rosinality_state(), torch.zeros(STYLE_DIM))
    generator = read_stylegan2_checkpoint(path)
    with pytest.raises(ValueError, match="image_size 64 \\(checkpoint: 32\\)"):
        coat_config_for(generator, preset="tiny")
    with pytest.raises(ValueError, match="decoder_channels"):
        load_decoder(COATModel(COATConfig.preset("tiny", image_size=32)), generator)
    with pytest.raises(SystemExit):
        main([str(path), "--out", str(tmp_path / "out"), "--preset", "tiny"])
    assert "does not fit this StyleGAN2 checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda sd, attrs: attrs.update({"synthesis.b8": {"architecture": "resnet"}}), "architecture='resnet'"),
    (lambda sd, attrs: sd.update({"synthesis.input.affine.weight": torch.zeros(4, STYLE_DIM)}), "StyleGAN3"),
    (lambda sd, attrs: sd.update({"synthesis.b8.conv0.resample_filter": torch.ones(4, 4) / 16}), "FIR filter"),
    (lambda sd, attrs: sd.pop("synthesis.b16.torgb.affine.bias"), "synthesis.b16.torgb.affine.bias"),
], ids=["resnet", "stylegan3", "filter", "missing"])
def test_nvlabs_generators_the_decoder_cannot_express_are_refused(change, message: str) -> None:
    sd, attributes = dict(Generator(seed=4).state_dict()), {}
    change(sd, attributes)
    with pytest.raises(ValueError, match=message):
        generator = nvlabs_to_coat(sd, attributes)
        load_decoder(COATModel(coat_config_for(generator, encoder_channels=[8, 16])), generator)


def test_train_config_comes_from_the_recipe_shipped_in_the_package(tmp_path: Path) -> None:
    package = Path(importlib.util.find_spec("coat_hf").origin).parent
    assert PAPER_TRAIN_CONFIG.is_relative_to(package) and PAPER_TRAIN_CONFIG.is_file()  # in wheels too
    recipe = yaml.safe_load(PAPER_TRAIN_CONFIG.read_text())
    training_copy = REPO / "training" / "configs" / "paper-256.yaml"
    if training_copy.is_file():  # while training keeps its own copy, the two agree
        assert yaml.safe_load(training_copy.read_text()) == recipe
    out = tmp_path / "coat"
    main([str(write_nvlabs(tmp_path / "g.pkl", Generator(seed=12))), "--out", str(out), "--encoder-channels", "8", "16"])
    train_config = yaml.safe_load((out / "train_config.yaml").read_text())
    assert train_config["train_modules"] == "encoders" and "model_preset" not in train_config
    assert {k: train_config[k] for k in ("batch_size", "learning_rate", "max_steps", "lr_scheduler")} == {
        k: recipe[k] for k in ("batch_size", "learning_rate", "max_steps", "lr_scheduler")}


def test_command_runs_as_a_module() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "coat_hf.convert_stylegan2", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and "--encoder-channels" in done.stdout, done.stderr


@pytest.mark.slow
def test_cli_then_training_keeps_the_imported_decoder_frozen(tmp_path: Path) -> None:
    g_ema = Generator(seed=11)
    out = tmp_path / "coat"
    main([str(write_nvlabs(tmp_path / "g.pkl", g_ema)), "--out", str(out), "--encoder-channels", "8", "16"])
    train_config = yaml.safe_load((out / "train_config.yaml").read_text())
    assert train_config["init_from"] == str(out.resolve()) and train_config["train_modules"] == "encoders"
    converted = COATModel.from_pretrained(out)

    data_dir = tmp_path / "images"
    data_dir.mkdir()
    for i in range(4):
        make_shape_image(SIZE, seed=i).save(data_dir / f"img{i}.png")
    export = Trainer(parse_arguments([
        "--config", str(out / "train_config.yaml"), "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "2", "--batch_size", "2", "--mixed_precision", "no", "--report_to", "none",
        "--num_workers", "0", "--lr_warmup_steps", "0", "--sample_every", "100", "--checkpoint_every", "100",
        "--lambda_lpips", "0", "--ccl_num_positions", "16",
    ])).train()
    trained = COATModel.from_pretrained(export)
    for name, value in converted.decoder.state_dict().items():
        assert torch.equal(trained.decoder.state_dict()[name], value), name
    torch.testing.assert_close(trained.latent_avg, converted.latent_avg)
    changed = [not torch.equal(p, converted.state_dict()[n]) for n, p in trained.state_dict().items()
               if n.startswith(("encoder.", "modulation_encoder."))]
    assert any(changed)


# ---------------------------------------------------------------------------------------------------
# Hostile or broken files: bounded work, one line, exit status 2.


def module_tree_pickle(levels: int, children: int, cycle: bool = False) -> bytes:
    """A pickle ``{"G_ema": node}`` of ``training.networks.Node`` modules written opcode by opcode (pickling so
    deep a tree would exhaust Python's own recursion): ``levels`` levels whose every node has ``children``
    submodules all of which are the one node below (2**levels paths when children is 2); with ``cycle``, the
    leaf's submodule is the root."""
    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value)) + value.encode()

    def get(index: int) -> bytes:
        return b"j" + struct.pack("<I", index)

    def node(index: int, child_memo: list[int]) -> bytes:  # NEWOBJ, memoised, then BUILD with its _modules
        items = b"".join(text(f"m{i}") + get(memo) for i, memo in enumerate(child_memo))
        return (b"ctraining.networks\nNode\n)\x81r" + struct.pack("<I", index) + b"}" + text("_modules") + b"}"
                + (b"(" + items + b"u" if items else b"") + b"sb")

    root = levels  # the cycle's leaf refers to the root's memo slot before the root exists: NEWOBJ it first
    data = b"\x80\x02" + (b"ctraining.networks\nNode\n)\x81r" + struct.pack("<I", root) + b"0" if cycle else b"")
    data += node(0, [root] if cycle else []) + b"0"
    for index in range(1, levels):
        data += node(index, [index - 1] * children) + b"0"
    top = levels - 1
    if cycle:  # the root: the object made first, given its state now
        data += get(root) + b"}" + text("_modules") + b"}" + text("m0") + get(top) + b"s" + b"sb0"
        top = root
    return data + b"}" + text("G_ema") + get(top) + b"s."


@pytest.mark.parametrize("levels, children, cycle, message", [
    (30, 2, False, "not an NVlabs StyleGAN2 generator: synthesis blocks at"),  # 2**30 paths to 30 distinct modules
    (20, 1, True, "not an NVlabs StyleGAN2 generator: synthesis blocks at"),
    (5000, 1, False, "nests submodules deeper than 32 levels"),
], ids=["shared", "cyclic", "deep"])
def test_module_trees_are_walked_in_bounded_work(tmp_path: Path, capsys, levels, children, cycle, message) -> None:
    path = tmp_path / "tree.pkl"
    path.write_bytes(module_tree_pickle(levels, children, cycle))
    data = load_network_pickle(path)
    assert data["G_ema"].qualified_name == "training.networks.Node"
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_truncated_and_empty_checkpoints_give_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    good = write_rosinality(tmp_path / "g.pt", rosinality_state(), torch.zeros(STYLE_DIM)).read_bytes()
    nvlabs = pickle.dumps({"G_ema": list(range(100))})
    files = {"truncated.pt": good[: len(good) // 2], "empty.pt": b"", "empty.pkl": b"",
             "truncated.pkl": nvlabs[: len(nvlabs) // 2]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SystemExit) as exit_info:
            main([str(tmp_path / name), "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "(truncated or corrupt)" in err, err
    # As a module, in a fresh interpreter: the same line, no traceback.
    done = subprocess.run([sys.executable, "-m", "coat_hf.convert_stylegan2", str(tmp_path / "empty.pkl"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"python -m coat_hf.convert_stylegan2: error: {tmp_path / 'empty.pkl'} is not a readable network pickle "
        "(truncated or corrupt): Ran out of input"]
