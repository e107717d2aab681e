"""Training data for COAT: content/style pairs of one object category, read through 🤗 datasets.

Sources (``open_image_dataset``): a local folder of images (``imagefolder``; nested class folders such
as ``afhq/{cat,dog,wild}`` become a ``label`` column), or a hub dataset name with an image column;
``streaming=True`` reads either lazily, for sets too large to index.

Pair rule (``PairDataset``, the paper trains without paired ground truth): sample i is content image
i together with a style image drawn uniformly at random from the *other* images of the same class
(the same category when the folder has class sub-folders; otherwise any other image). The
reconstruction branch of the objective pairs each content image with itself. Every random choice of
a sample (its style partner, its flips and crops, and the seed the objective uses for its own draws)
comes from ``sample_seed(seed, epoch, i)``, so a sample is the same whatever the number of processes,
workers or the batch it lands in: one process with batch 4 sees exactly what two processes with
batch 2 see.

Images are decoded lazily; an unreadable or corrupt file is skipped (counted in the batch's
``skipped``) and replaced by the next readable one. Optional foreground masks (``mask_dir``, same file
names, any size: resized to the photo) follow the photo through the same geometric transforms.
"""

from __future__ import annotations

import fnmatch
import io
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.distributed import split_dataset_by_node
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
_MAX_REPLACEMENTS = 32  # consecutive unreadable files before giving up on the whole set


@dataclass
class DataOptions:
    """What ``build_dataset`` needs; the training config carries these fields."""

    data_dir: str | None = None
    dataset_name: str | None = None  # a hub dataset (instead of data_dir)
    dataset_config: str | None = None
    dataset_split: str = "train"
    image_column: str = "image"
    label_column: str | None = "label"  # pairs stay within a class when the column exists
    mask_dir: str | None = None
    streaming: bool = False
    exclude: str | None = None  # "|"-separated globs on file names, e.g. "horse28[1-9]*|horse29*|horse300*"
    holdout_last: int = 0  # drop the last N files in sorted order (held out for evaluation)
    image_size: int = 128
    hflip: bool = True
    crop_scale: float = 1.0  # < 1: random resized crop with area in [crop_scale, 1]; 1: short side + center crop
    seed: int = 0
    shuffle_buffer: int = 1000  # streaming only


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 62-bit seed for sample ``index`` of ``epoch``: independent of batching, workers and processes."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 30 | int(state[1]) >> 2


def resolve_folders(data_dir: str, mask_dir: str | None) -> tuple[str, str | None]:
    """``data_dir`` with ``images/`` and ``masks/`` sub-folders (e.g. ``horses/``) reads both."""
    root = Path(data_dir)
    if mask_dir is None and (root / "images").is_dir() and (root / "masks").is_dir():
        return str(root / "images"), str(root / "masks")
    return data_dir, mask_dir


def open_image_dataset(options: DataOptions) -> datasets.Dataset | datasets.IterableDataset:
    """The images as a 🤗 dataset with undecoded image column ``image`` (dicts of ``path``/``bytes``)."""
    if (options.data_dir is None) == (options.dataset_name is None):
        raise ValueError("give exactly one of data_dir (a local image folder) or dataset_name (a hub dataset)")
    if options.data_dir is not None:
        if not Path(options.data_dir).is_dir():
            raise ValueError(f"data_dir {options.data_dir!r} is not a folder")
        ds = datasets.load_dataset("imagefolder", data_dir=options.data_dir, split="train",
                                   streaming=options.streaming)
    else:
        ds = datasets.load_dataset(options.dataset_name, options.dataset_config, split=options.dataset_split,
                                   streaming=options.streaming)
    if options.image_column not in (ds.column_names or [options.image_column]):
        raise ValueError(f"image_column {options.image_column!r} not in the dataset's columns {ds.column_names}")
    if options.image_column != "image":
        ds = ds.rename_column(options.image_column, "image")
    return ds.cast_column("image", datasets.Image(decode=False))


def _excluded(path: str | None, patterns: list[str]) -> bool:
    return path is not None and any(fnmatch.fnmatch(os.path.basename(path), p) for p in patterns)


def select_training_rows(ds: datasets.Dataset, options: DataOptions) -> list[int]:
    """Row indices in sorted-path order, without the ``exclude`` globs and the ``holdout_last`` files."""
    images = ds["image"]
    paths = [im.get("path") or "" for im in images]
    patterns = [p for p in (options.exclude or "").split("|") if p]
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    if options.holdout_last:
        order = order[: max(len(order) - options.holdout_last, 0)]
    rows = [i for i in order if not _excluded(paths[i], patterns)]
    if not rows:
        raise ValueError("no training images left after exclude/holdout_last")
    return rows


def decode_image(image: dict) -> Image.Image:
    """An RGB PIL image from a 🤗 undecoded image dict (path or bytes); raises on a corrupt file."""
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with Image.open(source) as im:
        return im.convert("RGB")


def find_mask(mask_dir: str, image_path: str) -> str | None:
    """The mask file of ``image_path``: the same stem in ``mask_dir`` with any image extension."""
    stem = Path(image_path).stem
    for ext in (Path(image_path).suffix, *IMAGE_EXTENSIONS):
        candidate = Path(mask_dir) / f"{stem}{ext}"
        if candidate.is_file():
            return str(candidate)
    return None


class PairTransform:
    """Geometric augmentation of a photo (and its mask) to ``image_size`` and pixels in [-1, 1].

    Resize the short side and center crop (or a random resized crop when ``crop_scale < 1``), then a
    random horizontal flip. No colour augmentation: appearance is exactly what COAT transfers.
    """

    def __init__(self, image_size: int, hflip: bool = True, crop_scale: float = 1.0) -> None:
        if not 0 < crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
        if crop_scale < 1:
            geometry = [v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), ratio=(0.9, 1.1), antialias=True)]
        else:
            geometry = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        if hflip:
            geometry.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize([0.5] * 3, [0.5] * 3)])  # masks pass ToDtype/Normalize as is

    def __call__(self, image: Image.Image, mask: Image.Image | None, seed: int) -> tuple[Tensor, Tensor | None]:
        """(3, S, S) pixels in [-1, 1] and a (1, S, S) mask in {0, 1} (or None); ``seed`` fixes the draws."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if mask is None:
                return self.transform(image).as_subclass(Tensor), None
            mask = mask.resize(image.size, Image.NEAREST)
            pixels, mask_t = self.transform(image, tv_tensors.Mask(torch.from_numpy(np.array(mask))[None]))
        return pixels.as_subclass(Tensor), (mask_t > 127).as_subclass(Tensor).float()


class PairDataset(Dataset):
    """Map-style content/style pairs over ``rows`` of a 🤗 image dataset (see the module's pair rule).

    Item ``i``: ``content`` and ``style`` (3, S, S) in [-1, 1], ``mask`` (1, S, S) of the content when
    ``mask_dir`` is set, ``seed`` (the objective's per-sample seed) and ``skipped`` (unreadable files
    passed over to build this item). Call ``set_epoch`` before each epoch.
    """

    def __init__(self, ds: datasets.Dataset, rows: list[int], options: DataOptions) -> None:
        self.ds, self.rows, self.options = ds, rows, options
        self.transform = PairTransform(options.image_size, options.hflip, options.crop_scale)
        self.epoch = 0
        labels = None
        if options.label_column and options.label_column in ds.column_names:
            labels = np.asarray(ds[options.label_column])[rows]
        # For each position, the positions of its class (style partners are drawn from these).
        classes = np.zeros(len(rows), dtype=np.int64) if labels is None else labels
        self.class_members = {c: np.flatnonzero(classes == c) for c in np.unique(classes)}
        self.classes = classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, position: int) -> tuple[Image.Image, Image.Image | None]:
        image = self.ds[self.rows[position]]["image"]
        photo = decode_image(image)
        mask = None
        if self.options.mask_dir:
            mask_path = find_mask(self.options.mask_dir, image.get("path") or "")
            if mask_path is None:
                raise FileNotFoundError(f"no mask for {image.get('path')} in {self.options.mask_dir}")
            with Image.open(mask_path) as m:
                mask = m.convert("L")
        return photo, mask

    def _load_readable(self, position: int) -> tuple[Image.Image, Image.Image | None, int]:
        """The image at ``position`` or, if unreadable, the next readable one; and how many were skipped."""
        for skipped in range(_MAX_REPLACEMENTS):
            p = (position + skipped) % len(self)
            try:
                return (*self._load(p), skipped)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                logger.warning("skipping unreadable image %s: %s", self.ds[self.rows[p]]["image"].get("path"), err)
        raise RuntimeError(f"{_MAX_REPLACEMENTS} consecutive unreadable images from position {position}")

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        seed = sample_seed(self.options.seed, self.epoch, position)
        rng = np.random.default_rng(seed)
        members = self.class_members[self.classes[position]]
        others = members[members != position]
        style_position = int(rng.choice(others)) if len(others) else position
        content, mask, skipped = self._load_readable(position)
        style, _, style_skipped = self._load_readable(style_position)
        content_t, mask_t = self.transform(content, mask, seed ^ 1)
        style_t, _ = self.transform(style, None, seed ^ 2)
        item = {"content": content_t, "style": style_t, "seed": torch.tensor(seed),
                "skipped": torch.tensor(skipped + style_skipped)}
        if mask_t is not None:
            item["mask"] = mask_t
        return item


class EpochSampler(Sampler[int]):
    """A permutation of ``range(size)`` fixed by ``(seed, epoch)``: the same on every process."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class StreamingPairDataset(IterableDataset):
    """Endless content/style pairs from a streamed 🤗 dataset: each image's style partner is a random earlier one.

    Each pass over the stream is shuffled with a buffer (seeded by the pass number) and split between
    processes (``rank``/``world_size``); a reservoir of recent images provides style partners (class
    labels are not used). Passes repeat without end, so every process always has a next batch.
    ``set_epoch(e, skip)`` starts at pass ``e`` after the ``skip`` samples this process already yielded.
    """

    def __init__(self, ds: datasets.IterableDataset, options: DataOptions, rank: int = 0, world_size: int = 1,
                 reservoir: int = 64) -> None:
        self.ds, self.options, self.rank, self.world_size = ds, options, rank, world_size
        self.transform = PairTransform(options.image_size, options.hflip, options.crop_scale)
        self.patterns = [p for p in (options.exclude or "").split("|") if p]
        self.reservoir, self.epoch, self.skip = reservoir, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _photos(self) -> Iterator[tuple[int, Image.Image | None]]:
        """(running index, decoded photo or None when unreadable) over endless passes."""
        index = 0
        for epoch in itertools.count(self.epoch):
            stream = self.ds.shuffle(seed=self.options.seed + epoch, buffer_size=self.options.shuffle_buffer)
            stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
            for row in stream:
                if _excluded(row["image"].get("path"), self.patterns):
                    continue
                try:
                    yield index, decode_image(row["image"])
                except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                    logger.warning("skipping unreadable image %s: %s", row["image"].get("path"), err)
                    yield index, None
                index += 1

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        recent: list[Image.Image] = []
        skipped = emitted = 0
        for index, photo in self._photos():
            if photo is None:
                skipped += 1
                continue
            seed = sample_seed(self.options.seed, self.epoch, index * self.world_size + self.rank)
            rng = np.random.default_rng(seed)
            style = recent[int(rng.integers(len(recent)))] if recent else photo
            if len(recent) < self.reservoir:
                recent.append(photo)
            else:
                recent[int(rng.integers(self.reservoir))] = photo
            emitted += 1
            if emitted <= self.skip:
                continue
            content_t, _ = self.transform(photo, None, seed ^ 1)
            style_t, _ = self.transform(style, None, seed ^ 2)
            yield {"content": content_t, "style": style_t, "seed": torch.tensor(seed), "skipped": torch.tensor(skipped)}
            skipped = 0


def build_dataset(options: DataOptions, rank: int = 0, world_size: int = 1) -> Dataset | IterableDataset:
    """The training pairs for ``options`` (map-style, or streaming when ``options.streaming``)."""
    if options.data_dir is not None:
        data_dir, mask_dir = resolve_folders(options.data_dir, options.mask_dir)
        options = DataOptions(**{**options.__dict__, "data_dir": data_dir, "mask_dir": mask_dir})
        if mask_dir:
            logger.info("images from %s, foreground masks from %s", data_dir, mask_dir)
    ds = open_image_dataset(options)
    if options.streaming:
        if options.mask_dir or options.holdout_last:
            raise ValueError("mask_dir and holdout_last need a map-style dataset: set streaming to false")
        return StreamingPairDataset(ds, options, rank, world_size)
    return PairDataset(ds, select_training_rows(ds, options), options)
