"""Metrics of appearance transfer: structure kept, appearance taken, reconstruction.

All images are (B, 3, S, S) in [-1, 1]; masks are (B, 1, S, S) in {0, 1}. Features are VGG16's
(ImageNet weights, ``coat_hf.lpips_weights.load_vgg16_features``) at relu1_2, relu2_2, relu3_3 and
relu4_3, each resized bilinearly to a common ``grid_size`` x ``grid_size`` grid and concatenated into
hypercolumns (C = 64 + 128 + 256 + 512 = 960 channels per position), as STROTSS (Kolkin et al., 2019) does.

* Structure distance (lower = content's layout kept), STROTSS's self-similarity loss: with hypercolumns
  on a ``structure_grid`` grid (N positions), ``D_ij = 1 − cos(F_i, F_j)``, columns normalised to sum to
  one, ``D̃_ij = D_ij / Σ_i' D_i'j``; then ``d_struct(X, Y) = (1/N) Σ_j Σ_i |D̃^X_ij − D̃^Y_ij|``, the
  mean L1 distance between matching columns, in [0, 2]. It compares each image's layout with itself,
  so a global colour change barely moves it.
* Appearance distance (lower = style's look taken): the sliced Wasserstein distance
  ``SW_2(X, Y) = (E_θ ∫_0^1 (Q_θX(t) − Q_θY(t))^2 dt)^(1/2)`` between two point sets, with θ uniform
  random unit directions (seeded, so every method is measured along the same ones) and Q the
  empirical quantile functions of the projections. Sets of unequal size are compared at
  ``max(N, M)`` quantile levels ``(k + 1/2) / max(N, M)`` by linear interpolation. Taken between the
  result's and the style's VGG hypercolumns (``swd_vgg``) and their Lab pixels (``swd_lab``, in Lab
  units, as ΔE76); with masks, only the object's positions count: the style's under the style's mask, the
  result's under the content's (the result keeps the content's layout), so with masks even the style
  image itself is not at distance 0 unless both objects cover the same pixels.
* Reconstruction (content = style): PSNR on [0, 1] pixels, ``10 log10(1 / MSE)``, capped at
  ``max_db`` = 100 dB (identical images give exactly 100), and LPIPS (AlexNet, v0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import self_similarity, self_similarity_distance
from ..lpips_weights import VGG16_RELUS, imagenet_normalize, load_lpips, load_vgg16_features
from ..color import rgb_to_lab

HYPERCOLUMN_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


class VGGHypercolumns(nn.Module):
    """VGG16 activations at ``layers``, resized to ``grid_size`` and concatenated: (B, 3, S, S) -> (B, C, g, g)."""

    def __init__(
        self,
        layers: tuple[str, ...] = HYPERCOLUMN_LAYERS,
        grid_size: int = 64,
        features: nn.Sequential | None = None,
    ) -> None:
        super().__init__()
        unknown = set(layers) - set(VGG16_RELUS)
        if unknown:
            raise ValueError(f"layers must be among {list(VGG16_RELUS)}, got unknown {sorted(unknown)}")
        if grid_size < 1:
            raise ValueError(f"grid_size must be positive, got {grid_size}")
        self.indices = sorted(VGG16_RELUS[name] for name in layers)
        features = load_vgg16_features() if features is None else features
        self.features = features[: self.indices[-1] + 1]
        self.out_channels = sum(self.features[i - 1].out_channels for i in self.indices)  # each ReLU follows its conv
        self.grid_size = grid_size

    def forward(self, images: Tensor) -> Tensor:
        h = imagenet_normalize(images)
        grid = (self.grid_size, self.grid_size)
        columns = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.indices:
                columns.append(F.interpolate(h, size=grid, mode="bilinear", align_corners=False, antialias=True))
        return torch.cat(columns, dim=1)  # (B, C, g, g)


def structure_distance(features_x: Tensor, features_y: Tensor) -> Tensor:
    """Structure distance of two (B, C, H, W) feature maps on the same grid: (B,), in [0, 2]."""
    if features_x.shape != features_y.shape:
        raise ValueError(
            f"features_x and features_y must match, got {tuple(features_x.shape)} and {tuple(features_y.shape)}"
        )
    return self_similarity_distance(self_similarity(features_x), self_similarity(features_y))


def _quantiles(sorted_values: Tensor, count: int) -> Tensor:
    """Empirical quantile functions of (P, N) row-sorted values at levels (k + 1/2)/count: (P, count)."""
    n = sorted_values.shape[1]
    if n == count:
        return sorted_values
    position = ((torch.arange(count, device=sorted_values.device) + 0.5) * n / count - 0.5).clamp(0, n - 1)
    low = position.floor().long()
    high = (low + 1).clamp_max(n - 1)
    weight = (position - low).to(sorted_values)
    return sorted_values[:, low] * (1 - weight) + sorted_values[:, high] * weight


def random_directions(dim: int, num_projections: int, seed: int = 0) -> Tensor:
    """``num_projections`` seeded unit vectors of R^dim, uniform on the sphere: (dim, P)."""
    if num_projections < 1:
        raise ValueError(f"num_projections must be positive, got {num_projections}")
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(dim, num_projections, generator=generator), dim=0)


def sorted_projections(points: Tensor, directions: Tensor) -> Tensor:
    """(N, C) points projected on (C, P) directions and sorted along each: (P, N)."""
    if points.ndim != 2 or points.shape[1] != directions.shape[0]:
        raise ValueError(f"points must be (N, {directions.shape[0]}), got {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise ValueError("points must hold at least one point (is a mask empty?)")
    return (directions.T.to(points) @ points.T).sort(dim=1).values


def wasserstein_from_projections(projections_x: Tensor, projections_y: Tensor) -> Tensor:
    """SW_2 from ``sorted_projections`` of both sets, (P, N) and (P, M), compared at max(N, M) quantiles: scalar."""
    count = max(projections_x.shape[1], projections_y.shape[1])
    return (_quantiles(projections_x, count) - _quantiles(projections_y, count)).pow(2).mean().sqrt()


def sliced_wasserstein_distance(x: Tensor, y: Tensor, num_projections: int = 256, seed: int = 0) -> Tensor:
    """SW_2 between point sets x (N, C) and y (M, C) along ``num_projections`` seeded directions: scalar."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, C) and (M, C) point sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    directions = random_directions(x.shape[1], num_projections, seed)
    return wasserstein_from_projections(sorted_projections(x, directions), sorted_projections(y, directions))


def masked_points(values: Tensor, mask: Tensor | None) -> Tensor:
    """Positions of a (C, H, W) map as a (N, C) point set, only where ``mask`` (1, H', W') covers them.

    The mask is area-resized to (H, W) and a position counts when at least half of it is object.
    """
    points = values.flatten(1).T  # (H·W, C)
    if mask is None:
        return points
    coverage = F.interpolate(mask[None].float(), size=values.shape[1:], mode="area")[0, 0]
    return points[coverage.flatten() >= 0.5]


def psnr(x: Tensor, y: Tensor, max_db: float = 100.0) -> Tensor:
    """PSNR in dB of (B, 3, H, W) images in [-1, 1], compared on [0, 1]: (B,); identical images give ``max_db``."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = ((x - y) / 2).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(10.0 ** (-max_db / 10.0)))


def local_color_ratio(result_cells: Tensor, content_cells: Tensor, style_cells: Tensor) -> float:
    """How close the result's local colours are to the style's, relative to the content's own distance.

    Each argument is (G·G, 3) mean Lab colours per grid cell (NaN outside the object). The distance is the
    mean Euclidean Lab distance over the cells present in all three; the ratio is 1 for the content itself
    and 0 when every cell takes the style's colour (aligned objects, so cells roughly correspond).
    """
    present = ~(result_cells.isnan() | content_cells.isnan() | style_cells.isnan()).any(dim=1)
    if not present.any():
        return float("nan")
    to_style = (result_cells - style_cells)[present].norm(dim=1).mean()
    baseline = (content_cells - style_cells)[present].norm(dim=1).mean()
    return (to_style / baseline.clamp_min(1e-6)).item()


@dataclass
class Reference:
    """What the metrics need of one content or style image (batch of one): kept so each is computed once."""

    image: Tensor  # (1, 3, S, S) in [-1, 1]
    mask: Tensor | None  # (1, 1, S, S) in {0, 1}
    hypercolumns: Tensor  # (1, C, g, g)
    self_similarity: Tensor  # (1, N, N) on the structure grid
    lab_projections: Tensor  # (P_lab, M), sorted projections of the (masked) Lab pixels
    vgg_projections: Tensor  # (P, M'), sorted projections of the (masked) hypercolumns
    lab_cells: Tensor  # (G·G, 3), mean Lab colour of each cell of a G x G grid (NaN where no object)


class TransferMetrics(nn.Module):
    """Every metric of the evaluation, with VGG16, LPIPS and the projection directions made once.

    ``reference(image, mask)`` prepares a content or style image; ``transfer(result, content, style)``
    gives structure_distance, swd_vgg, swd_lab and local_color; ``reconstruction(result, target)`` psnr and
    lpips.
    ``num_projections`` directions serve the 960-d hypercolumns, ``lab_projections`` the 3-d colours.
    """

    def __init__(
        self,
        grid_size: int = 64,
        structure_grid: int = 32,
        num_projections: int = 256,
        lab_projections: int = 64,
        seed: int = 0,
        vgg: VGGHypercolumns | None = None,
        lpips_net: str = "alex",
        color_grid: int = 16,
    ) -> None:
        super().__init__()
        self.color_grid = color_grid
        if structure_grid > grid_size:
            raise ValueError(f"structure_grid ({structure_grid}) must not exceed grid_size ({grid_size})")
        self.vgg = VGGHypercolumns(grid_size=grid_size) if vgg is None else vgg
        self.lpips = load_lpips(lpips_net)
        self.structure_grid = structure_grid
        self.register_buffer(
            "vgg_directions", random_directions(self.vgg.out_channels, num_projections, seed), persistent=False
        )
        self.register_buffer("lab_directions", random_directions(3, lab_projections, seed), persistent=False)

    def _structure(self, hypercolumns: Tensor) -> Tensor:
        return self_similarity(F.adaptive_avg_pool2d(hypercolumns, self.structure_grid))

    def _appearance(self, image: Tensor, hypercolumns: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Sorted projections of the object's Lab pixels and hypercolumns (mask (1, S, S) or None)."""
        lab = rgb_to_lab((image + 1) / 2)[0]  # (3, S, S)
        return (sorted_projections(masked_points(lab, mask), self.lab_directions),
                sorted_projections(masked_points(hypercolumns[0], mask), self.vgg_directions))

    def _cells(self, image: Tensor, mask: Tensor | None) -> Tensor:
        """Mean Lab colour of each cell of a ``color_grid`` x ``color_grid`` grid, (G·G, 3); cells less than half
        covered by the (1, S, S) mask are NaN."""
        lab = rgb_to_lab((image + 1) / 2)  # (1, 3, S, S)
        weight = torch.ones_like(lab[:, :1]) if mask is None else mask[None].to(lab.dtype)
        coverage = F.adaptive_avg_pool2d(weight, self.color_grid)  # (1, 1, G, G)
        cells = F.adaptive_avg_pool2d(lab * weight, self.color_grid) / coverage.clamp_min(1e-6)
        cells = cells.masked_fill(coverage < 0.5, float("nan"))
        return cells[0].flatten(1).t()

    @torch.no_grad()
    def reference(self, image: Tensor, mask: Tensor | None = None) -> Reference:
        """Prepare one image (1, 3, S, S) and its optional mask (1, 1, S, S)."""
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"image must be a single (1, 3, S, S) image, got {tuple(image.shape)}")
        hypercolumns = self.vgg(image)
        object_mask = None if mask is None else mask[0]
        lab_projections, vgg_projections = self._appearance(image, hypercolumns, object_mask)
        return Reference(image, mask, hypercolumns, self._structure(hypercolumns), lab_projections, vgg_projections,
                         self._cells(image, object_mask))

    @torch.no_grad()
    def transfer(self, result: Tensor, content: Reference, style: Reference) -> dict[str, float]:
        """Structure distance to the content, appearance distances to the style, of a (1, 3, S, S) result."""
        hypercolumns = self.vgg(result)
        object_mask = None if content.mask is None else content.mask[0]  # the result keeps the content's layout
        lab_projections, vgg_projections = self._appearance(result, hypercolumns, object_mask)
        return {
            "structure_distance": self_similarity_distance(self._structure(hypercolumns), content.self_similarity).item(),
            "swd_vgg": wasserstein_from_projections(vgg_projections, style.vgg_projections).item(),
            "swd_lab": wasserstein_from_projections(lab_projections, style.lab_projections).item(),
            "local_color": local_color_ratio(self._cells(result, object_mask), content.lab_cells, style.lab_cells),
        }

    @torch.no_grad()
    def reconstruction(self, result: Tensor, target: Tensor) -> dict[str, float]:
        """PSNR (dB, higher is better) and LPIPS (lower is better) of a (1, 3, S, S) result against its target."""
        return {"psnr": psnr(result, target).item(), "lpips": self.lpips(result, target).item()}
