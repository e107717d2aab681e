"""COAT's encoders: the multi-scale feature encoder E (Sec. 3.1), the modulation encoder E_mod (Sec. 3.3) and the
optional spatial structure code (a departure, :class:`StructureCode`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stylegan2 import EqualLinear


class ResidualDownBlock(nn.Module):
    """Two 3x3 convs with leaky ReLU, stride 2 on the second, plus a strided 1x1 shortcut; scaled by 1/sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        return (h + self.skip(x)) / math.sqrt(2)


class FeatureEncoder(nn.Module):
    """E: image (B, 3, S, S) -> L feature maps F_l of shape (B, C_l, S/2^l, S/2^l), shallow to deep."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        widths = [channels[0], *channels]
        self.stages = nn.ModuleList(ResidualDownBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        h = F.leaky_relu(self.stem(pixel_values), 0.2)
        features = []
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        return features


class MapToStyle(nn.Module):
    """pSp's map-to-style block: stride-2 3x3 convs with leaky ReLU from (B, C, R, R) down to (B, D, 1, 1)."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        num_convs = int(math.log2(spatial))
        widths = [in_channels] + [out_channels] * num_convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return x.flatten(1)  # (B, D)


def upsample_bilinear_2x(x: Tensor) -> Tensor:
    """2x bilinear upsampling, ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``:
    x (B, C, h, w) -> (B, C, 2h, 2w). Output 2i blends input i and i - 1, output 2i + 1 blends i and i + 1
    (weights 3/4 and 1/4, the edge sample repeated), one axis at a time. Elementwise work that
    ``torch.compile`` fuses: the interpolation's own gradient is a scatter-add that took 14% of a compiled
    training step on an H100 (three pyramid levels, up to 5 ms each at batch 128).
    """
    for dim in (3, 2):
        n = x.shape[dim]
        before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)  # x[i - 1], edge repeated
        after = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)  # x[i + 1]
        x = torch.stack([0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after], dim=dim + 1).flatten(dim, dim + 1)
    return x


class ModulationEncoder(nn.Module):
    """E_mod: multi-scale maps -> per-layer style vectors (B, K, D) for the decoder's K modulation layers.

    Each layer k reads the map of scale ``style_scales[k]``. Departure from pSp (one conv stack per
    layer): the layers that read the same scale share one :class:`MapToStyle` stack and each has its own
    equalised linear head, which keeps the parameter count practical for the small presets.

    With ``pyramid=True`` (pSp's GradualStyleEncoder, a departure from COAT's per-scale reading) the maps
    first pass through a top-down feature pyramid: 1x1 lateral convs to D channels, each deeper level
    upsampled bilinearly and added to the next shallower one, so every layer sees every scale.
    """

    def __init__(
        self, feature_channels: Sequence[int], feature_sizes: Sequence[int], style_dim: int,
        style_scales: Sequence[int], pyramid: bool = False,
    ) -> None:
        super().__init__()
        self.style_scales = list(style_scales)
        used = sorted(set(self.style_scales))
        self.laterals = None
        if pyramid:
            self.laterals = nn.ModuleList(nn.Conv2d(c, style_dim, 1) for c in feature_channels[used[0]:])
        self.trunks = nn.ModuleDict(
            {str(l): MapToStyle(style_dim if pyramid else feature_channels[l], style_dim, feature_sizes[l])
             for l in used}
        )
        self.heads = nn.ModuleList(EqualLinear(style_dim, style_dim) for _ in self.style_scales)

    def _pyramid(self, features: Sequence[Tensor]) -> dict[int, Tensor]:
        """Top-down pyramid P_l = lateral_l(F_l) + up(P_{l+1}), (B, D, h_l, w_l) for the used scales."""
        first = len(features) - len(self.laterals)
        levels: dict[int, Tensor] = {}
        p = None
        for l in range(len(features) - 1, first - 1, -1):
            lateral = self.laterals[l - first](features[l])
            p = lateral if p is None else lateral + upsample_bilinear_2x(p)  # sizes halve: powers of two
            levels[l] = p
        return levels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        maps = self._pyramid(features) if self.laterals is not None else dict(enumerate(features))
        pooled = {l: trunk(maps[int(l)]) for l, trunk in self.trunks.items()}  # each (B, D)
        return torch.stack([head(pooled[str(l)]) for head, l in zip(self.heads, self.style_scales)], dim=1)


class StructureCode(nn.Module):
    """The content's spatial structure code, added to D's features (a departure from COAT, after the Swapping
    Autoencoder's structure code, Park et al. 2020): E's map (B, C_l, r, r) -> 1x1 conv to ``code_channels`` (the
    bottleneck that limits how much of the content's appearance it carries), leaky ReLU, 1x1 conv to D's width at
    resolution r -> (B, C_D, r, r).

    The second conv starts at zero, so a model given a fresh code decodes exactly as it did without one: a trained
    model continues with it from where it stands.
    """

    def __init__(self, in_channels: int, code_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, code_channels, 1)
        self.weight = nn.Parameter(torch.zeros(out_channels, code_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, features: Tensor) -> Tensor:
        return F.conv2d(F.leaky_relu(self.reduce(features), 0.2), self.weight, self.bias)
