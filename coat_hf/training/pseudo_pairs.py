"""Pseudo-exemplar pairs for the supervised transfer term, and the geometric augmentation of real photos.

COAT trains without paired ground truth; its only transfer signal (L_CCL) guards structure, so nothing
asks a transfer to *show* the style. The transfer term (a departure from the paper, after CoCosNet's and
deep exemplar-based colourisation's training schemes) builds a pair whose answer is known: the target is
the content photo with its appearance changed, the style input is the same changed photo under a
geometric warp. Reproducing the target from (content, style) needs the style's appearance carried
through correspondences, and the warp is the only geometric difference between style and target.

Everything runs batched on the images' device with per-sample counter-based draws
(:mod:`coat_hf.training.random`), so a sample's pair depends only on its key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .random import normal, uniform

# Stream ids of the draws (any distinct values; see coat_hf.training.random).
# A stream of change_appearance's draws takes that id and the next (the colour cast).
_FLIP, _CROP, _APPEARANCE, _AFFINE, _ELASTIC, _STRUCTURE_VIEW = 101, 102, 103, 105, 106, 107


@dataclass
class PseudoPairOptions:
    """Ranges of the pseudo-exemplar draws (all symmetric around "no change" unless said otherwise)."""

    reference_strength: float = 1.0  # the most of another photo's colour statistics mixed in (U(0, max))
    color_cast: float = 0.15  # per-channel log-gain standard deviation
    brightness: float = 0.1  # additive offset in [0, 1] units, U(-b, b)
    contrast: float = 0.4  # log-contrast U(-c, c)
    saturation: float = 0.6  # log-saturation U(-s, s)
    gamma: float = 0.4  # log-gamma U(-g, g)
    rotation_degrees: float = 12.0
    scale: float = 0.12  # log-scale U(-s, s)
    translation: float = 0.08  # fraction of the image side, U(-t, t)
    elastic: float = 0.04  # standard deviation of the smooth displacement's control points (grid units)
    elastic_grid: int = 4  # control points per side of the smooth displacement


def _channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean and standard deviation, (B, 3, 1, 1) each."""
    return images.mean(dim=(2, 3), keepdim=True), images.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)


def change_appearance(images: Tensor, references: Tensor, keys: Tensor, options: PseudoPairOptions,
                      stream: int = _APPEARANCE) -> Tensor:
    """Colour, brightness, contrast, saturation and gamma jitter plus another photo's colour statistics.

    images, references: (B, 3, S, S) in [-1, 1]; keys: (B,) sample keys -> (B, 3, S, S) in [-1, 1]. ``stream``
    (and ``stream + 1``) names the draws: another stream gives an independent appearance of the same sample.
    """
    x = (images.float() + 1) / 2
    u = uniform(keys, stream, 6)[:, :, None, None, None]  # (B, 6, 1, 1, 1)
    cast = normal(keys, stream + 1, 3)[:, :, None, None] * options.color_cast  # (B, 3, 1, 1)
    mean, std = _channel_stats(x)
    ref_mean, ref_std = _channel_stats((references.float() + 1) / 2)
    strength = u[:, 0] * options.reference_strength
    x = x + strength * ((x - mean) / std * ref_std + ref_mean - x)  # Reinhard-style statistics transfer
    x = x * cast.exp() + (2 * u[:, 1] - 1) * options.brightness
    grey = x.mean(dim=1, keepdim=True)
    x = grey.mean(dim=(2, 3), keepdim=True) + (x - grey.mean(dim=(2, 3), keepdim=True)) * (
        (2 * u[:, 2] - 1) * options.contrast).exp()
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * ((2 * u[:, 3] - 1) * options.saturation).exp()
    x = x.clamp(1e-4, 1).pow(((2 * u[:, 4] - 1) * options.gamma).exp())
    return (x * 2 - 1).to(images.dtype)


def random_warp(images: Tensor, keys: Tensor, options: PseudoPairOptions) -> Tensor:
    """A random flip, rotation, scale, shift and smooth elastic displacement of each image.

    The elastic part is a bicubic interpolation of random offsets on an ``elastic_grid``² lattice (a
    smooth warp in the spirit of the thin-plate spline, without the linear solve).
    images: (B, C, S, S) -> (B, C, S, S); borders are filled by reflection.
    """
    b, _, size, _ = images.shape
    u = uniform(keys, _AFFINE, 5)  # (B, 5)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    angle = (2 * u[:, 1] - 1) * math.radians(options.rotation_degrees)
    scale = ((2 * u[:, 2] - 1) * options.scale).exp()
    shift = (2 * u[:, 3:5] - 1) * options.translation * 2  # grid units span 2 per side
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)  # (B, S, S, 2)
    g = options.elastic_grid
    control = normal(keys, _ELASTIC, 2 * g * g).view(b, 2, g, g) * options.elastic
    grid = grid + F.interpolate(control, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def pseudo_exemplar_pair(content: Tensor, references: Tensor, keys: Tensor, options: PseudoPairOptions
                         ) -> tuple[Tensor, Tensor]:
    """The style input and the target of the transfer term, (B, 3, S, S) each in [-1, 1].

    target = ``change_appearance(content, references)``; style = ``random_warp(target)``.
    """
    target = change_appearance(content, references, keys, options)
    return random_warp(target, keys, options), target


def structure_view(content: Tensor, references: Tensor, keys: Tensor, options: PseudoPairOptions) -> Tensor:
    """The content under an appearance independent of the pseudo pair's, for the structure code in training.

    content, references: (B, 3, S, S) in [-1, 1] -> (B, 3, S, S): the same layout, other colours, so a code
    computed from it cannot hand D the content's own colours.
    """
    return change_appearance(content, references, keys, options, stream=_STRUCTURE_VIEW)


def augment_geometry(images: Tensor, keys: Tensor, hflip: bool, crop_scale: float) -> Tensor:
    """The data augmentation of real photos: random resized crop (area in [crop_scale, 1]) and flip.

    images: (B, C, S, S), any C (a mask channel follows the photo) -> the same shape.
    """
    b, _, size, _ = images.shape
    u = uniform(keys, _CROP, 3)  # (B, 3)
    flip = torch.where((uniform(keys, _FLIP, 1)[:, 0] < 0.5) & hflip, -1.0, 1.0)
    if crop_scale >= 1:
        return torch.where(flip[:, None, None, None] < 0, images.flip(-1), images)
    side = (crop_scale + (1 - crop_scale) * u[:, 0]).sqrt()  # crop side as a fraction of the image
    centre = (2 * u[:, 1:3] - 1) * (1 - side[:, None])  # keeps the crop inside the image
    zero = torch.zeros_like(side)
    theta = torch.stack([torch.stack([side * flip, zero, centre[:, 0]], 1),
                         torch.stack([zero, side, centre[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)
