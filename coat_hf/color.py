"""sRGB <-> CIE Lab (D65 white, 2° observer) on tensors, and Reinhard colour transfer in Lab, for the pipeline's
``color_match`` option, the evaluation's colour metrics and its ``color-transfer`` baseline.

Forward: undo the sRGB gamma, ``XYZ = M · rgb_linear`` (the sRGB primaries' matrix), divide by the
D65 white point, then ``L = 116 f(Y) − 16``, ``a = 500 (f(X) − f(Y))``, ``b = 200 (f(Y) − f(Z))`` with
``f(t) = t^(1/3)`` above ``(6/29)^3`` and linear below. L lies in [0, 100]; a, b roughly in [−110, 110].
The inverse runs the same steps backwards; out-of-gamut results are clipped to [0, 1] only by callers.
"""

from __future__ import annotations

import torch
from torch import Tensor

_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_DELTA = 6.0 / 29.0


def _check_image(image: Tensor, name: str) -> None:
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor, got shape {tuple(image.shape)}")


def _apply_matrix(matrix: Tensor, image: Tensor) -> Tensor:
    """``matrix`` (3, 3) times every pixel of (B, 3, H, W)."""
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1], (B, 3, H, W) -> Lab, (B, 3, H, W) with channels (L, a, b)."""
    _check_image(rgb, "rgb")
    rgb = rgb.clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).pow(2.4))
    xyz = _apply_matrix(_RGB_TO_XYZ, linear) / _D65_WHITE.to(rgb)[None, :, None, None]
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12).pow(1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Lab (B, 3, H, W) -> sRGB (B, 3, H, W), not clipped (out-of-gamut colours leave [0, 1])."""
    _check_image(lab, "lab")
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    xyz = torch.where(f > _DELTA, f.pow(3), 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _D65_WHITE.to(lab)[None, :, None, None]
    linear = _apply_matrix(torch.linalg.inv(_RGB_TO_XYZ), xyz)
    return torch.where(
        linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12).pow(1.0 / 2.4) - 0.055
    )


def lab_statistics(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """An image's Lab values and their per-channel mean and standard deviation over the whole image, the
    statistics Reinhard's transfer matches: (B, 3, H, W) in [-1, 1] -> Lab (B, 3, H, W), mean and std
    (B, 3, 1, 1), in float32."""
    lab = rgb_to_lab((image.float() + 1) / 2)
    return lab, lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True)


def match_color(image: Tensor, reference: Tensor) -> Tensor:
    """Reinhard et al. (2001) colour transfer: ``out = (x − μ_image) σ_reference / σ_image + μ_reference`` per Lab
    channel, statistics over the whole image.

    image, reference: (B, 3, H, W) in [-1, 1] (sizes may differ) -> (B, 3, H, W) in [-1, 1], computed in float32.
    """
    _check_image(image, "image")
    _check_image(reference, "reference")
    if image.shape[0] != reference.shape[0]:
        raise ValueError(f"image and reference need the same batch size, got {image.shape[0]} and {reference.shape[0]}")
    image_lab, mean_i, std_i = lab_statistics(image)
    _, mean_r, std_r = lab_statistics(reference)
    lab = (image_lab - mean_i) * std_r / std_i.clamp_min(1e-6) + mean_r
    return (lab_to_rgb(lab).clamp(0, 1) * 2 - 1).to(image.dtype)
