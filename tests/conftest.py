"""Shared fixtures: a tiny untrained COAT model and small generated images (no photos needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from coat_hf import COATConfig, COATModel

DATA_DIR = Path(os.environ.get("COAT_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def make_shape_image(size: int = 64, seed: int = 0) -> Image.Image:
    """A synthetic RGB picture: a gradient background with a few coloured ellipses and rectangles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 255, 3)
    bg = np.stack([base[c] * (0.5 + 0.5 * (xx if c % 2 else yy)) for c in range(3)], axis=-1)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    return img


def to_pixel_values(img: Image.Image) -> torch.Tensor:
    """PIL -> (1, 3, H, W) in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1)[None]


@pytest.fixture(scope="session")
def tiny_config() -> COATConfig:
    return COATConfig.preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config: COATConfig) -> COATModel:
    torch.manual_seed(0)
    return COATModel(tiny_config).eval()


@pytest.fixture(scope="session")
def image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two different 64 px images, (2, 3, 64, 64) each in [-1, 1] (batch of two pairs)."""
    content = torch.cat([to_pixel_values(make_shape_image(64, s)) for s in (1, 2)])
    style = torch.cat([to_pixel_values(make_shape_image(64, s)) for s in (3, 4)])
    return content, style


@pytest.fixture
def data_dir() -> Path:
    """../shared/data, or skip when the photos are absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real photos not found at {DATA_DIR} (set COAT_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_train_args():
    """Command-line arguments of a 32 px training run on ``data_dir`` (no LPIPS download, one thread)."""
    config = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml"

    def make(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
        return ["--config", str(config), "--data_dir", str(data_dir), "--output_dir", str(output_dir),
                "--report_to", "none", "--lambda_lpips", "0", "--torch_threads", "1", *extra]

    return make
