"""Import a pretrained StyleGAN2 generator as COAT's frozen decoder D.

    python -m coat_hf.convert_stylegan2 CHECKPOINT --out DIR [--preset paper-256] [--encoder-channels 64 128 256 512]

COAT (Sec. 3) decodes with a pretrained StyleGAN2 generator that stays frozen while the encoders E and
E_mod train. This module reads the two common checkpoint formats:

* **rosinality** ``stylegan2-pytorch`` ``.pt`` files: ``torch.load(..., weights_only=True)`` of a dict whose
  ``g_ema`` holds the generator state dict (``style.*`` mapping network, ``input.input``, ``conv1``,
  ``to_rgb1``, ``convs.{i}``, ``to_rgbs.{i}``, ``noises.noise_{i}``) and, for converted official models,
  ``latent_avg``. COAT's decoder uses the same names, so the synthesis weights copy over unchanged.
* **NVlabs** ``stylegan2-ada-pytorch`` / ``stylegan3`` (``--cfg stylegan2``) ``.pkl`` network pickles. These
  hold ``torch_utils.persistence`` objects that carry their own source code, which NVlabs' loader
  executes. :class:`RestrictedUnpickler` never does: every NVlabs object (any global whose module is
  ``torch_utils``, ``training`` or ``dnnlib``, or below them) becomes an inert :class:`NetworkStub`
  that only records the object's state, tensors are rebuilt through ``torch.load(weights_only=True)``,
  and any other global (``os.system``, ``builtins.eval``, ...) is refused with :class:`UnsafePickleError`.
  The generator (``G_ema``) is then read by attribute names (``synthesis.b{res}.conv0/conv1/torgb``,
  ``mapping.w_avg``), never by trusting class names.

NVlabs' layers differ from rosinality's only in how they store the same quantities, so the mapping is
exact: conv weights gain a leading batch axis (the per-layer 1/sqrt(fan-in) gain that rosinality applies
is cancelled by demodulation, Eq. 3 of StyleGAN2, up to its 1e-8 epsilon), ``affine`` is the modulation
layer (same equalised-lr parameterisation, bias initialised to 1), the ToRGB gain 1/sqrt(C) that NVlabs
applies to the styles rosinality applies to the weight, ``noise_strength``/``noise_const`` become the noise
weight and fixed noise map, and the up-sampling convolution needs no flip: both store the kernel of a
stride-2 transposed convolution followed by the 4-tap FIR filter (NVlabs' "upsample, then convolve"
with padding applied once is the same operation). Caveats: ``conv_clamp`` (clipping activations to
±256, an fp16 safeguard of NVlabs' training configs) is not applied, which changes nothing unless an
activation exceeds it; fp16 layers run in float32, as NVlabs' ``force_fp32`` does; only the ``skip``
architecture with 3x3 convs, lrelu and the [1, 3, 3, 1] filter (every official StyleGAN2 model) maps onto D.

The converter writes a COAT model folder (``save_pretrained``: random encoders, imported decoder and its
average latent, used by E_mod as the origin of its offsets and by L_reg) and a ``train_config.yaml`` for
``training/train.py`` that starts from it with ``train_modules: encoders`` (the paper's setting).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import pickle
import re
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from .configuration_coat import COATConfig
from .modeling_coat import COATModel
from .stylegan2 import EqualLinear

logger = logging.getLogger(__name__)

FORMATS = ("auto", "rosinality", "nvlabs")
DEFAULT_PRESET = "paper-256"
# The paper-scale training recipe written by the training scripts; train_config.yaml starts from it.
PAPER_TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "paper-256.yaml"
_ARCHITECTURE_FIELDS = ("image_size", "in_channels", "encoder_channels", "style_dim", "decoder_channels",
                        "blur_kernel", "style_scales")


# ---------------------------------------------------------------------------------------------------
# Safe reading of NVlabs network pickles.


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than tensors, plain containers and NVlabs network objects."""


class NetworkStub(dict):
    """Inert stand-in for an object of NVlabs' code (a network layer, an ``EasyDict``, ...).

    It runs nothing of the original class: it keeps the class name the file gives (``qualified_name``),
    the constructor arguments (``args``), the ``__dict__`` the object would get (``state``) and, being a
    dict, any items (an ``EasyDict``'s content).
    """

    qualified_name = "?"
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any) -> None:
        super().__init__()
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} stand-in>"


_NVLABS_MODULES = ("torch_utils", "training", "dnnlib")
_STUB_CLASSES: dict[str, type[NetworkStub]] = {}


def _stub_class(qualified_name: str) -> type[NetworkStub]:
    if qualified_name not in _STUB_CLASSES:
        _STUB_CLASSES[qualified_name] = type("NetworkStub", (NetworkStub,), {"qualified_name": qualified_name})
    return _STUB_CLASSES[qualified_name]


def _persistent_object(meta: Any) -> NetworkStub:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the class name and
    state of a persistent object and drops its ``module_src`` unread."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise UnsafePickleError("malformed torch_utils.persistence record (expected a class with a state dict)")
    stub = _stub_class(f"persistent:{meta.get('class_name')}")()
    stub.state = meta["state"]
    return stub


def _load_storage(data: bytes) -> torch.TypedStorage:
    """Stand-in for ``torch.storage._load_from_bytes`` (which unpickles without restrictions)."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("a tensor storage must be serialised as bytes")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafePickleError(f"a tensor storage in the pickle is not plain tensor data: {error}") from error
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f"expected a tensor storage, got {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *unused: Any) -> Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a view of ``storage``, bounds checked; hooks ignored."""
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError("tensor data must come from a storage")
    ints = [storage_offset, *size, *stride]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or len(size) != len(stride):
        raise UnsafePickleError("malformed tensor record (offset, sizes and strides must be non-negative ints)")
    tensor = torch.empty((0,), dtype=storage.dtype)
    numel = storage._untyped_storage.nbytes() // tensor.element_size()
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if 0 not in size and last >= numel:
        raise UnsafePickleError(f"tensor record reaches element {last} of a storage of {numel}")
    return tensor.set_(storage._untyped_storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *unused: Any) -> Tensor:
    """Stand-in for ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor."""
    if not isinstance(data, Tensor):
        raise UnsafePickleError("a parameter must wrap a tensor")
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    # NumPy scalars (e.g. layers' weight_gain) and plain arrays, under NumPy 1 and 2 module names.
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(f"numpy.{core}.multiarray", "scalar"): np.float64(0).__reduce__()[0] for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0] for core in ("core", "_core")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles NVlabs network pickles without building any foreign object or running any foreign code.

    Allowed: tensors (rebuilt from their bytes with ``torch.load(weights_only=True)``), ``OrderedDict``,
    sets, NumPy scalars and arrays, and globals of NVlabs' code layout (modules ``torch_utils``,
    ``training``, ``dnnlib`` and below), each replaced by a :class:`NetworkStub`. Anything else raises
    :class:`UnsafePickleError`.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if any(module == root or module.startswith(root + ".") for root in _NVLABS_MODULES):
            return _stub_class(f"{module}.{name}")
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: a StyleGAN2 network pickle may only hold tensors, plain containers "
            f"and NVlabs network objects ({', '.join(_NVLABS_MODULES)}), and this global could run arbitrary code"
        )


def load_network_pickle(file: str | Path | BinaryIO) -> Any:
    """Read an NVlabs ``.pkl`` with :class:`RestrictedUnpickler`: networks come back as :class:`NetworkStub`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
        if isinstance(file, (str, Path)):
            with open(file, "rb") as f:
                return RestrictedUnpickler(f).load()
        return RestrictedUnpickler(file).load()


MAX_MODULE_DEPTH = 32
"""Deepest submodule nesting :func:`module_states` accepts (a StyleGAN2 generator nests 4 levels)."""


def module_states(net: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """The ``__dict__`` of a stand-in ``torch.nn.Module`` and of all its submodules, keyed by dotted path.

    As in ``nn.Module.named_modules``, a submodule reachable by several paths (shared, or in a cycle) is listed
    once, under the first: the walk is iterative and linear in the number of distinct modules, and nesting deeper
    than :data:`MAX_MODULE_DEPTH` is refused.
    """
    states: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    stack = [(prefix, net, 0)]
    while stack:
        path, module, depth = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        state = getattr(module, "state", None)
        if not isinstance(module, NetworkStub) or not isinstance(state, dict) or not isinstance(state.get("_modules"),
                                                                                                 dict):
            raise ValueError(f"{path or 'the network'} is not a pickled torch.nn.Module ({module!r})")
        if depth > MAX_MODULE_DEPTH:
            raise ValueError(f"the network nests submodules deeper than {MAX_MODULE_DEPTH} levels; not a StyleGAN2 "
                             "generator")
        states[path] = state
        children = [(f"{path}.{name}" if path else str(name), child, depth + 1)
                    for name, child in state["_modules"].items() if child is not None]
        stack.extend(reversed(children))  # pre-order, as a recursive walk would list them
    return states


def named_tensors(states: Mapping[str, Mapping[str, Any]]) -> dict[str, Tensor]:
    """Parameters and buffers of :func:`module_states`, as a flat state dict."""
    tensors = {}
    for path, state in states.items():
        for group in ("_parameters", "_buffers"):
            values = state.get(group) or {}
            if not isinstance(values, Mapping):
                raise ValueError(f"{path or 'the network'}.{group} is a {type(values).__name__}, not a dict")
            for name, value in values.items():
                if value is None:
                    continue
                if not isinstance(value, Tensor):
                    raise ValueError(f"{path}.{name} is a {type(value).__name__}, not a tensor")
                tensors[f"{path}.{name}" if path else name] = value
    return tensors


# ---------------------------------------------------------------------------------------------------
# Generators in COAT's decoder layout.


@dataclass
class ImportedGenerator:
    """A pretrained StyleGAN2 generator expressed in COAT's decoder layout.

    Args:
        decoder_state: weights under :class:`~coat_hf.stylegan2.StyleGAN2Synthesis` names (``.kernel``
            entries are the FIR filters the generator uses; they are checked, not loaded).
        latent_avg: the mapping network's average latent w̄, (style_dim,).
        image_size, style_dim, channels: the synthesis network's resolution, style width and per-resolution
            widths (4, 8, ..., image_size).
        source: ``"rosinality"`` or ``"nvlabs"``.
    """

    decoder_state: dict[str, Tensor]
    latent_avg: Tensor
    image_size: int
    style_dim: int
    channels: list[int]
    source: str

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"a {self.image_size} px generator is too small for COAT's decoder (8 px or more)")
        if self.latent_avg.shape != (self.style_dim,):
            raise ValueError(f"latent_avg has shape {tuple(self.latent_avg.shape)}, expected ({self.style_dim},)")

    @property
    def num_modulation_layers(self) -> int:
        """K = 2·log2(image_size) − 2."""
        return 2 * int(math.log2(self.image_size)) - 2


def pixel_norm(z: Tensor) -> Tensor:
    """StyleGAN's input normalisation z / sqrt(mean(z²) + 1e-8) over the feature axis. (N, Z) -> (N, Z)."""
    return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)


@torch.no_grad()
def mean_latent(layers: Sequence[tuple[Tensor, Tensor]], lr_mul: float = 0.01, num_samples: int = 10_000,
                seed: int = 0) -> Tensor:
    """w̄ = E_z[f(z)] for a mapping network f = PixelNorm then equalised linear layers with leaky ReLU.

    ``layers`` are the (weight (out, in), bias (out,)) pairs as stored (learning-rate multiplier ``lr_mul``);
    z ~ N(0, I), ``num_samples`` draws from a ``torch.Generator`` seeded with ``seed``. Returns (w_dim,).
    """
    mapping = nn.Sequential()
    for weight, bias in layers:
        layer = EqualLinear(weight.shape[1], weight.shape[0], lr_mul=lr_mul, activation=True)
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
        mapping.append(layer)
    z = torch.randn(num_samples, layers[0][0].shape[1], generator=torch.Generator().manual_seed(seed))
    return mapping(pixel_norm(z)).mean(dim=0)


def _require(tensors: Mapping[str, Tensor], name: str, layout: str) -> Tensor:
    if name not in tensors:
        raise ValueError(f"not a {layout} StyleGAN2 generator: {name!r} is missing")
    return tensors[name]


def rosinality_to_coat(g_ema: Mapping[str, Tensor], latent_avg: Tensor | None = None, mapping_lr_mul: float = 0.01,
                       num_samples: int = 10_000, seed: int = 0) -> ImportedGenerator:
    """A rosinality ``Generator`` state dict -> :class:`ImportedGenerator` (the synthesis names are COAT's).

    Without ``latent_avg`` the average latent is estimated from the mapping network ``style.{i}``
    (:func:`mean_latent`, rosinality's default ``lr_mlp`` of 0.01 unless ``mapping_lr_mul`` says otherwise).
    """
    layout = "rosinality"
    const = _require(g_ema, "input.input", layout)  # (1, C, 4, 4)
    style_dim = _require(g_ema, "conv1.conv.modulation.weight", layout).shape[1]
    num_rgbs = len({m.group(1) for k in g_ema if (m := re.match(r"to_rgbs\.(\d+)\.", k))})
    channels = [const.shape[1]] + [
        _require(g_ema, f"to_rgbs.{k}.conv.weight", layout).shape[2] for k in range(num_rgbs)
    ]
    if latent_avg is None:
        indices = sorted(int(m.group(1)) for k in g_ema if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
        if not indices:
            raise ValueError("the checkpoint has neither latent_avg nor the mapping network (style.*) to compute it")
        layers = [(g_ema[f"style.{i}.weight"], _require(g_ema, f"style.{i}.bias", layout)) for i in indices]
        latent_avg = mean_latent(layers, mapping_lr_mul, num_samples, seed)
    state = {k: v for k, v in g_ema.items() if not k.startswith("style.")}
    return ImportedGenerator(state, latent_avg.squeeze(0).float(), 4 * 2**num_rgbs, style_dim, channels, layout)


def _fir_kernel(resample_filter: Tensor) -> Tensor:
    """NVlabs' prepared filter (normalised; 2-D, or 1-D when separable) -> COAT's 2x up-sampling kernel."""
    f = resample_filter.float()
    f = f[:, None] * f[None, :] if f.ndim == 1 else f
    return f * 4  # gain up² keeps the mean of the zero-inserted signal


def nvlabs_to_coat(tensors: Mapping[str, Tensor], attributes: Mapping[str, Mapping[str, Any]] | None = None,
                   num_samples: int = 10_000, seed: int = 0) -> ImportedGenerator:
    """An NVlabs ``Generator`` (flat state dict under NVlabs names, plus each module's plain attributes)
    -> :class:`ImportedGenerator`. Refuses architectures D cannot express."""
    layout, attributes = "NVlabs", attributes or {}
    if "synthesis.input.affine.weight" in tensors or any(re.match(r"synthesis\.L\d+_", k) for k in tensors):
        raise ValueError("this is a StyleGAN3 (alias-free) generator, not StyleGAN2: COAT's decoder cannot load it")
    blocks = (re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", k) for k in tensors)
    resolutions = sorted(int(m.group(1)) for m in blocks if m)
    if not resolutions or resolutions != [4 * 2**i for i in range(len(resolutions))]:
        raise ValueError(f"not an NVlabs StyleGAN2 generator: synthesis blocks at {resolutions}, "
                         "expected 4, 8, 16, ...")
    for path, attrs in attributes.items():
        for pattern, key, supported in ((r"synthesis\.b\d+", "architecture", "skip"),
                                        (r"synthesis\.b\d+\.conv[01]", "activation", "lrelu")):
            if re.fullmatch(pattern, path) and attrs.get(key, supported) != supported:
                raise ValueError(f"{path} uses {key}={attrs[key]!r}; COAT's decoder is StyleGAN2 with "
                                 f"{key}={supported!r}")
    clamps = {a["conv_clamp"] for a in attributes.values() if a.get("conv_clamp") is not None}
    if clamps:
        logger.info("conv_clamp=%s is not applied: it only clips activations beyond ±%s (an fp16 safeguard)",
                    clamps, max(clamps))

    state: dict[str, Tensor] = {}

    def styled_conv(src: str, dst: str, noise_index: int, resolution: int, up: bool) -> None:
        weight = _require(tensors, f"{src}.weight", layout)  # (out, in, 3, 3)
        if weight.shape[-1] != 3:
            raise ValueError(f"{src} has {weight.shape[-1]}x{weight.shape[-1]} kernels; COAT's decoder uses 3x3")
        state[f"{dst}.conv.weight"] = weight[None]
        state[f"{dst}.conv.modulation.weight"] = _require(tensors, f"{src}.affine.weight", layout)
        state[f"{dst}.conv.modulation.bias"] = _require(tensors, f"{src}.affine.bias", layout)
        state[f"{dst}.activate.bias"] = _require(tensors, f"{src}.bias", layout)
        if f"{src}.noise_strength" in tensors:  # use_noise=False stores neither: no noise at all
            state[f"{dst}.noise.weight"] = tensors[f"{src}.noise_strength"].reshape(1)
            noise = _require(tensors, f"{src}.noise_const", layout)
        else:
            state[f"{dst}.noise.weight"] = torch.zeros(1)
            noise = torch.zeros(resolution, resolution)
        state[f"noises.noise_{noise_index}"] = noise[None, None]
        if up:
            state[f"{dst}.conv.blur.kernel"] = _fir_kernel(_require(tensors, f"{src}.resample_filter", layout))

    def to_rgb(res: int, dst: str, up: bool) -> None:
        src = f"synthesis.b{res}.torgb"
        weight = _require(tensors, f"{src}.weight", layout)  # (3, C, 1, 1)
        if weight.shape[0] != 3:
            raise ValueError(f"the generator makes {weight.shape[0]}-channel images; COAT needs RGB")
        state[f"{dst}.conv.weight"] = weight[None]
        state[f"{dst}.conv.modulation.weight"] = _require(tensors, f"{src}.affine.weight", layout)
        state[f"{dst}.conv.modulation.bias"] = _require(tensors, f"{src}.affine.bias", layout)
        state[f"{dst}.bias"] = _require(tensors, f"{src}.bias", layout).reshape(1, -1, 1, 1)
        if up:
            state[f"{dst}.upsample.kernel"] = _fir_kernel(
                _require(tensors, f"synthesis.b{res}.resample_filter", layout))

    state["input.input"] = _require(tensors, "synthesis.b4.const", layout)[None]  # (1, C, 4, 4)
    styled_conv("synthesis.b4.conv1", "conv1", 0, 4, up=False)
    to_rgb(4, "to_rgb1", up=False)
    for k, res in enumerate(resolutions[1:]):
        styled_conv(f"synthesis.b{res}.conv0", f"convs.{2 * k}", 2 * k + 1, res, up=True)
        styled_conv(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, res, up=False)
        to_rgb(res, f"to_rgbs.{k}", up=True)

    if "mapping.w_avg" in tensors:
        latent_avg = tensors["mapping.w_avg"]
    else:
        if "mapping.embed.weight" in tensors:
            raise ValueError("a conditional generator without mapping.w_avg: its average latent depends on the labels")
        indices = sorted(int(m.group(1)) for k in tensors if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
        if not indices:
            raise ValueError("the generator has neither mapping.w_avg nor the mapping network to compute it")
        lr_mul = float(attributes.get("mapping.fc0", {}).get("bias_gain", 0.01))
        latent_avg = mean_latent([(tensors[f"mapping.fc{i}.weight"], tensors[f"mapping.fc{i}.bias"]) for i in indices],
                                 lr_mul, num_samples, seed)
    channels = [tensors[f"synthesis.b{res}.conv1.weight"].shape[0] for res in resolutions]
    style_dim = state["conv1.conv.modulation.weight"].shape[1]
    return ImportedGenerator(state, latent_avg.float(), resolutions[-1], style_dim, channels, "nvlabs")


# ---------------------------------------------------------------------------------------------------
# Reading checkpoint files.


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def read_rosinality_checkpoint(path: str | Path, **kwargs: Any) -> ImportedGenerator:
    """A rosinality ``.pt`` (``g_ema`` [+ ``latent_avg``], or a bare generator state dict), loaded with
    ``weights_only=True`` (``argparse.Namespace`` training args allowed). ``kwargs`` go to
    :func:`rosinality_to_coat`."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} holds more than tensors and plain containers, so it is not read: {error}") from error
    except (RuntimeError, EOFError, OSError) as error:  # torch's reader on a truncated or empty file
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or corrupt): {_first_line(error)}"
                         ) from error
    if isinstance(checkpoint, Mapping) and "g_ema" in checkpoint:
        return rosinality_to_coat(checkpoint["g_ema"], checkpoint.get("latent_avg"), **kwargs)
    if isinstance(checkpoint, Mapping) and "input.input" in checkpoint:
        return rosinality_to_coat(checkpoint, **kwargs)
    keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ValueError(f"{path} is not a rosinality StyleGAN2 checkpoint (expected a 'g_ema' entry; found {keys})")


def read_nvlabs_pickle(path: str | Path, **kwargs: Any) -> ImportedGenerator:
    """An NVlabs ``.pkl``: its ``G_ema`` (else ``G``) read with :class:`RestrictedUnpickler`."""
    try:
        data = load_network_pickle(path)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable network pickle (truncated or corrupt): {_first_line(error)}"
                         ) from error
    if isinstance(data, tuple) and any(getattr(x, "qualified_name", "").startswith("dnnlib.tflib") for x in data):
        raise ValueError(f"{path} is a TensorFlow StyleGAN2 pickle: convert it first with rosinality's "
                         "convert_weight.py (to a .pt) or NVlabs' legacy.py (to a PyTorch .pkl)")
    name = next((key for key in ("G_ema", "G") if isinstance(data, dict) and key in data), None)
    if name is None:
        raise ValueError(f"{path} is not an NVlabs network pickle (no G_ema or G entry)")
    states = module_states(data[name])
    attributes = {path_: {k: v for k, v in state.items() if not k.startswith("_")} for path_, state in states.items()}
    return nvlabs_to_coat(named_tensors(states), attributes, **kwargs)


def read_stylegan2_checkpoint(path: str | Path, format: str = "auto", **kwargs: Any) -> ImportedGenerator:
    """Either format; ``auto`` tells them apart by content (``torch.save`` archive or pickle of networks)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if format == "auto":
        format = "rosinality" if zipfile.is_zipfile(path) or path.suffix in (".pt", ".pth") else "nvlabs"
    reader = read_rosinality_checkpoint if format == "rosinality" else read_nvlabs_pickle
    return reader(path, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Building the COAT model.


def coat_config_for(generator: ImportedGenerator, preset: str | None = None,
                    encoder_channels: Sequence[int] | None = None, **overrides: Any) -> COATConfig:
    """A :class:`COATConfig` whose decoder is ``generator``: the preset's encoder and loss settings
    (``paper-256`` when ``preset`` is None) with the checkpoint's size, widths and style dimension.

    An explicitly named ``preset`` must agree with the checkpoint (else ValueError).
    """
    decoder = dict(image_size=generator.image_size, style_dim=generator.style_dim,
                   decoder_channels=list(generator.channels))
    base = COATConfig.preset(preset or DEFAULT_PRESET)
    if preset is not None:
        mismatched = [f"{key} {getattr(base, key)} (checkpoint: {value})"
                      for key, value in decoder.items() if getattr(base, key) != value]
        if mismatched:
            raise ValueError(f"preset {preset!r} does not fit this StyleGAN2 checkpoint: " + "; ".join(mismatched)
                             + ". Leave the preset out to use the checkpoint's own sizes.")
    if encoder_channels is not None:
        decoder["encoder_channels"] = list(encoder_channels)
    default_n = min(base.default_n, generator.num_modulation_layers)
    return COATConfig.preset(preset or DEFAULT_PRESET, **{"default_n": default_n, **decoder, **overrides})


@torch.no_grad()
def load_decoder(model: COATModel, generator: ImportedGenerator) -> None:
    """Copy ``generator`` into ``model.decoder`` and ``model.latent_avg``; ValueError on any mismatch."""
    config = model.config
    expected = dict(image_size=generator.image_size, style_dim=generator.style_dim,
                    decoder_channels=list(generator.channels))
    mismatched = [f"{key}: checkpoint {value}, model {getattr(config, key)}"
                  for key, value in expected.items() if getattr(config, key) != value]
    if mismatched:
        raise ValueError("the StyleGAN2 generator does not fit this COAT model (" + "; ".join(mismatched)
                         + "); build the model from coat_config_for(generator)")
    target = model.decoder.state_dict()
    weights = {k: v for k, v in generator.decoder_state.items() if not k.endswith(".kernel")}
    unexpected = sorted(set(generator.decoder_state) - set(target))
    missing = sorted(k for k in target if k not in weights and not k.endswith(".kernel"))
    if missing and all(k.startswith("noises.") for k in missing):
        logger.warning("the checkpoint stores no fixed noise maps; noise_mode='const' will use random ones")
        missing = []
    if unexpected or missing:
        raise ValueError(f"the generator's weights do not follow the StyleGAN2 layout: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    for name, value in generator.decoder_state.items():
        if value.shape != target[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)}, decoder {tuple(target[name].shape)}")
        if name.endswith(".kernel") and not torch.allclose(value.float(), target[name], atol=1e-6):
            raise ValueError(f"{name}: the generator uses an FIR filter other than config.blur_kernel "
                             f"{config.blur_kernel}")
    model.decoder.load_state_dict({**target, **weights})
    model.latent_avg.copy_(generator.latent_avg)


def write_train_config(model_dir: str | Path, base: str | Path | None = PAPER_TRAIN_CONFIG) -> Path:
    """``model_dir/train_config.yaml`` for ``training/train.py``: ``base``'s recipe (the paper-256 one)
    starting from ``model_dir`` with only the encoders trained."""
    model_dir = Path(model_dir)
    values = {}
    if base is not None and Path(base).is_file():
        values = yaml.safe_load(Path(base).read_text()) or {}
    else:
        logger.warning("no training recipe at %s: train_config.yaml holds only the fields this converter sets", base)
    values.pop("model_preset", None)
    overrides = {k: v for k, v in (values.pop("model_overrides", None) or {}).items() if k not in _ARCHITECTURE_FIELDS}
    values = {"init_from": str(model_dir.resolve()), "train_modules": "encoders",
              **({"model_overrides": overrides} if overrides else {}),
              **{k: v for k, v in values.items() if k not in ("init_from", "train_modules")},
              "output_dir": f"runs/{model_dir.name}"}
    path = model_dir / "train_config.yaml"
    path.write_text(
        "# COAT on an imported StyleGAN2 decoder: E and E_mod train, the decoder stays frozen (the paper's setting).\n"
        f"#   python training/train.py --config {path} --data_dir /path/to/category\n"
        + yaml.safe_dump(values, sort_keys=False)
    )
    return path


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, format: str = "auto", preset: str | None = None,
                       encoder_channels: Sequence[int] | None = None, seed: int = 0,
                       train_config_base: str | Path | None = PAPER_TRAIN_CONFIG) -> COATModel:
    """Checkpoint -> COAT model folder (random encoders seeded by ``seed``, imported decoder, w̄) and its
    ``train_config.yaml``. Returns the model."""
    generator = read_stylegan2_checkpoint(checkpoint, format, seed=seed)
    config = coat_config_for(generator, preset, encoder_channels)
    torch.manual_seed(seed)
    model = COATModel(config).eval()
    load_decoder(model, generator)
    model.save_pretrained(out_dir)
    write_train_config(out_dir, train_config_base)
    return model


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coat_hf.convert_stylegan2",
        description="Import a pretrained StyleGAN2 generator (rosinality .pt or NVlabs .pkl) as the frozen decoder "
                    "of a new COAT model.",
    )
    parser.add_argument("checkpoint", help="rosinality stylegan2-pytorch .pt or NVlabs stylegan2-ada/stylegan3 .pkl")
    parser.add_argument("--out", required=True, help="folder for the COAT model (save_pretrained format)")
    parser.add_argument("--format", choices=FORMATS, default="auto")
    parser.add_argument("--preset", choices=COATConfig.preset_names(), default=None,
                        help=f"encoder and loss settings; must match the checkpoint when given (default: "
                             f"{DEFAULT_PRESET}'s, with the checkpoint's own decoder sizes)")
    parser.add_argument("--encoder-channels", type=int, nargs="+", default=None,
                        help="widths of E's scales, shallow to deep (overrides the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the encoders' initialisation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = convert_checkpoint(args.checkpoint, args.out, args.format, args.preset, args.encoder_channels,
                                   args.seed)
    except (ValueError, pickle.UnpicklingError) as error:  # one line, exit status 2, as for usage errors
        print(f"{parser.prog}: error: {_first_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    config, k = model.config, model.num_modulation_layers
    print(f"Imported a {config.image_size} px StyleGAN2 decoder (widths {config.decoder_channels}, "
          f"{config.style_dim}-d styles, K = {k} modulation layers, n in 0..{k})")
    print(f"COAT model: {args.out}\nTrain the encoders: python training/train.py --config "
          f"{Path(args.out) / 'train_config.yaml'} --data_dir /path/to/category")


if __name__ == "__main__":
    main()
