"""Colour space and Reinhard colour transfer (``coat_hf.color``)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_shape_image, to_pixel_values

from coat_hf.color import lab_to_rgb, match_color, rgb_to_lab


def test_lab_known_values_and_round_trip():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T[None, :, :, None]  # (1, 3, 3, 1)
    lab = rgb_to_lab(rgb)[0, :, :, 0].T
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(lab, expected, atol=0.01, rtol=0)
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(image)), image, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="rgb"):
        rgb_to_lab(torch.rand(3, 8, 8))


def shapes(size: int, *seeds: int) -> torch.Tensor:
    """Synthetic photos as (B, 3, size, size) in [-1, 1], scaled away from the gamut's edges."""
    return torch.cat([to_pixel_values(make_shape_image(size, seed)) for seed in seeds]) * 0.3


def test_match_color_gives_the_reference_lab_statistics():
    image, reference = shapes(32, 1, 2), shapes(48, 3, 4)  # sizes may differ
    matched = match_color(image, reference)
    assert matched.shape == image.shape and matched.min() >= -1 and matched.max() <= 1
    got, want = rgb_to_lab((matched + 1) / 2), rgb_to_lab((reference + 1) / 2)
    torch.testing.assert_close(got.mean(dim=(2, 3)), want.mean(dim=(2, 3)), atol=0.5, rtol=0)
    torch.testing.assert_close(got.std(dim=(2, 3)), want.std(dim=(2, 3)), atol=0.5, rtol=0)
    torch.testing.assert_close(match_color(image, image), image, atol=1e-3, rtol=0)  # its own colours: unchanged
    assert match_color(image.half(), reference).dtype == torch.float16


def test_match_color_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="same batch size"):
        match_color(shapes(16, 1, 2), shapes(16, 3))
    with pytest.raises(ValueError, match="reference"):
        match_color(shapes(16, 1), torch.rand(1, 1, 16, 16))
