"""The evaluation's images: a fixed, seeded list of content/style pairs drawn from an image folder.

Selection (``list_images``): the image files of the folder and its class sub-folders, as
:func:`coat_hf.image_io.find_images` finds them (sorted by relative path, as training reads them),
optionally only those whose names match ``include`` globs (``"horse28[1-9]*,horse29*,horse300*"``;
``,`` or ``|`` separated) and/or only the last ``holdout_last`` of them (the files training's
``holdout_last`` left out). Pairs (``sample_pairs``): ``num_pairs`` distinct ordered (content, style)
pairs of different images, drawn without replacement by ``random.Random(seed)``. Reconstruction images
(``sample_images``): a separate seeded draw, each used as both content and style.

Loading (``ImageLoader``): files read by :func:`coat_hf.image_io.load_image`, then the model's image
processor with the ``"crop"`` geometry (the short side resized to the model's size and the centre cut out,
as training does, so the object keeps its aspect ratio), pixels in [-1, 1]; a mask
(:func:`coat_hf.image_io.find_mask`, any size: resized to the photo first) follows the same geometry and is
thresholded at one half.
"""

from __future__ import annotations

import fnmatch
import random
import re
from pathlib import Path

from PIL import Image
from torch import Tensor

from ..configuration_coat import COATConfig
from ..image_io import find_images, find_mask, load_image
from ..image_processing_coat import COATImageProcessor


def list_images(folder: str | Path, include: str | None = None, holdout_last: int = 0) -> list[Path]:
    """Sorted image files of ``folder`` and its class sub-folders: the last ``holdout_last`` (0 = all), then
    those matching ``include``."""
    if holdout_last < 0:
        raise ValueError(f"--holdout-last must be >= 0, got {holdout_last}")
    images = find_images(folder, "--data")
    if holdout_last:
        images = images[-holdout_last:]
    patterns = [p for p in re.split(r"[,|]", include or "") if p]
    if patterns:
        images = [p for p in images if any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)]
    if len(images) < 2:
        raise ValueError(f"--data: need at least 2 images in {str(folder)!r} (and its sub-folders) after "
                         f"--include/--holdout-last, found {len(images)}")
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


class ImageLoader:
    """Photos (and masks) as model inputs: (1, 3, S, S) in [-1, 1] and (1, 1, S, S) in {0, 1}, cached by path.

    ``folder`` is the image folder the paths were found in (masks of class sub-folders are looked up in the same
    sub-folder of ``mask_dir`` first)."""

    def __init__(self, config: COATConfig, mask_dir: str | Path | None = None, folder: str | Path | None = None) -> None:
        self.processor = COATImageProcessor.from_model_config(config, "crop")
        self.mask_dir = None if mask_dir is None else Path(mask_dir)
        self.folder = folder
        self._cache: dict[Path, tuple[Tensor, Tensor | None]] = {}

    def __call__(self, path: Path) -> tuple[Tensor, Tensor | None]:
        if path not in self._cache:
            self._cache[path] = self._load(path)
        return self._cache[path]

    def _load(self, path: Path) -> tuple[Tensor, Tensor | None]:
        photo = load_image(path, name=path.name)
        pixels = self.processor(photo, return_tensors="pt")["pixel_values"]  # (1, 3, S, S)
        if self.mask_dir is None:
            return pixels, None
        mask_path = find_mask(self.mask_dir, path, self.folder)
        mask = load_image(mask_path, name=mask_path.name).convert("L").resize(photo.size, Image.NEAREST)
        return pixels, (self.processor.preprocess_mask(mask, return_tensors="pt") > 127).float()
