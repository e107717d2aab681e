"""A pretrained StyleGAN2 generator in COAT's decoder layout, whichever format it came from, and its average
latent w̄ (computed from the mapping network when the checkpoint lacks it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..stylegan2 import EqualLinear


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


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when empty): for one-line reports."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _require(tensors: Mapping[str, Tensor], name: str, layout: str) -> Tensor:
    if name not in tensors:
        raise ValueError(f"not a {layout} StyleGAN2 generator: {name!r} is missing")
    return tensors[name]
