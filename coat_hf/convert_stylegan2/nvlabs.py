"""NVlabs ``stylegan2-ada-pytorch`` / ``stylegan3`` (``--cfg stylegan2``) ``.pkl`` network pickles, read with
:func:`coat_hf.safe_pickle.load_network_pickle` (no code from the file runs) and mapped onto COAT's decoder."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..safe_pickle import NetworkStub, UnsafePickleError, load_network_pickle
from .generator import ImportedGenerator, _require, first_line, mean_latent

logger = logging.getLogger(__name__)


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


def read_nvlabs_pickle(path: str | Path, **kwargs: Any) -> ImportedGenerator:
    """An NVlabs ``.pkl``: its ``G_ema`` (else ``G``) read with :class:`RestrictedUnpickler`."""
    try:
        data = load_network_pickle(path)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable network pickle (truncated or corrupt): {first_line(error)}"
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
