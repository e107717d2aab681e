"""The evaluation's images: a fixed, seeded list of content/style pairs drawn from an image folder.

Selection (``list_images``): image files of the folder in sorted-name order, optionally only those whose
names match ``include`` globs (``"horse28[1-9]*,horse29*,horse300*"``; ``,`` or ``|`` separated) and/or
only the last ``holdout_last`` of them (the files training's ``holdout_last`` left out). Pairs
(``sample_pairs``): ``num_pairs`` distinct ordered (content, style) pairs of different images, drawn
without replacement by ``random.Random(seed)``. Reconstruction images (``sample_images``): a separate
seeded draw, each used as both content and style.

Loading (``ImageLoader``, files read by ``coat_hf.image_io.load_image``): resize the short side to the
model's size and centre-crop (as training does, so the object keeps its aspect ratio), pixels in [-1, 1]; a mask (same stem in the mask folder, any size: resized to the photo first) follows
the same geometry and is thresholded at one half.
"""

from __future__ import annotations

import fnmatch
import random
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..image_io import load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def resolve_folders(data_dir: str | Path, mask_dir: str | Path | None = None) -> tuple[Path, Path | None]:
    """A folder with ``images/`` and ``masks/`` sub-folders (e.g. ``horses/``) means both."""
    root = Path(data_dir)
    if mask_dir is None and (root / "images").is_dir() and (root / "masks").is_dir():
        return root / "images", root / "masks"
    return root, None if mask_dir is None else Path(mask_dir)


def list_images(folder: str | Path, include: str | None = None, holdout_last: int = 0) -> list[Path]:
    """Sorted image files of ``folder``: the last ``holdout_last`` (0 = all), then those matching ``include``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data folder {str(folder)!r} does not exist")
    if holdout_last < 0:
        raise ValueError(f"holdout_last must be >= 0, got {holdout_last}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if holdout_last:
        images = images[-holdout_last:]
    patterns = [p for p in re.split(r"[,|]", include or "") if p]
    if patterns:
        images = [p for p in images if any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)]
    if len(images) < 2:
        raise ValueError(f"need at least 2 images in {str(folder)!r} after include/holdout_last, found {len(images)}")
    return images


def sample_pairs(images: list[Path], num_pairs: int, seed: int = 0) -> list[tuple[Path, Path]]:
    """``num_pairs`` distinct (content, style) pairs of two different images, seeded."""
    k = len(images)
    if not 1 <= num_pairs <= k * (k - 1):
        raise ValueError(f"num_pairs must be in [1, {k * (k - 1)}] for {k} images, got {num_pairs}")
    pairs = []
    for index in random.Random(seed).sample(range(k * (k - 1)), num_pairs):
        content, offset = divmod(index, k - 1)
        pairs.append((images[content], images[offset + (offset >= content)]))
    return pairs


def sample_images(images: list[Path], count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct images for the reconstruction test (content = style), seeded apart from the pairs."""
    if not 0 <= count <= len(images):
        raise ValueError(f"count must be in [0, {len(images)}], got {count}")
    return random.Random(f"{seed}:reconstruction").sample(images, count)


def find_mask(mask_dir: Path, image_path: Path) -> Path:
    """The mask of ``image_path``: the same stem in ``mask_dir``, with any image extension."""
    for extension in (image_path.suffix, *IMAGE_EXTENSIONS):
        candidate = mask_dir / f"{image_path.stem}{extension}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no mask for {image_path.name} in {mask_dir}")


class ImageLoader:
    """Photos (and masks) as model inputs: (1, 3, S, S) in [-1, 1] and (1, 1, S, S) in {0, 1}, cached by path."""

    def __init__(self, image_size: int, mask_dir: str | Path | None = None) -> None:
        self.transform = v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
        self.mask_dir = None if mask_dir is None else Path(mask_dir)
        self._cache: dict[Path, tuple[Tensor, Tensor | None]] = {}

    def __call__(self, path: Path) -> tuple[Tensor, Tensor | None]:
        if path not in self._cache:
            self._cache[path] = self._load(path)
        return self._cache[path]

    def _load(self, path: Path) -> tuple[Tensor, Tensor | None]:
        photo = load_image(path, name=path.name)
        if self.mask_dir is None:
            return self.transform(photo).float().div(127.5).sub(1)[None], None
        mask_path = find_mask(self.mask_dir, path)
        mask = load_image(mask_path, name=mask_path.name).convert("L").resize(photo.size, Image.NEAREST)
        pixels, mask = self.transform(photo, tv_tensors.Mask(torch.from_numpy(np.array(mask))[None]))
        return pixels.float().div(127.5).sub(1)[None], (mask > 127).float()[None]
