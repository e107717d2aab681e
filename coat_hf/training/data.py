"""Training data for COAT: photos of one object category, a deterministic sample schedule, device batches.

Sources: a local folder of images (nested class folders such as ``afhq/{cat,dog,wild}`` are classes; a
folder with ``images/`` and ``masks/`` reads foreground masks of the same names), or a 🤗 hub dataset
with an image column (and optionally a label column).

The schedule (:class:`SampleSchedule`) is an endless stream of sample positions p = 0, 1, 2, ...: position
p is photo ``perm_e[p mod N]`` of epoch e = p div N (one seeded permutation per epoch), its style partner
is drawn uniformly from the *other* photos of its class, and its 32-bit key (which seeds every random
draw of the sample, :mod:`coat_hf.training.random`) is a hash of (seed, p). Step t's micro-batch m on
process r holds positions ((t·A + m)·P + r)·B + [0, B): a pure function of the step, so one process
with batch 4 sees exactly what two processes with batch 2 see, and a run resumed at any step, across
epoch boundaries, continues the very same stream.

Photos are decoded on the CPU through the model's image processor (``"crop"`` geometry: short side resized,
centre crop) as uint8 with the mask as a fourth channel; ``cache_images`` keeps them all on the training device after one pass
(unreadable files, decompression bombs included, are dropped then and counted once each); without it
a DataLoader decodes each step's photos, replacing an unreadable one by the next readable one.
Geometric augmentation (random resized crop, flip) then runs batched on the device.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..configuration_coat import COATConfig
from ..image_io import find_images, find_mask, image_and_mask_folders, image_class, load_image
from ..image_processing_coat import COATImageProcessor
from .pseudo_pairs import augment_geometry
from .random import hash32, random_bits, sample_keys

logger = logging.getLogger(__name__)

_PARTNER_STREAM = 201
_MAX_REPLACEMENTS = 32  # consecutive unreadable files before giving up (uncached)


@dataclass
class DataOptions:
    """Where the photos come from and how they are prepared; the training arguments carry these fields."""

    data_dir: str | None = field(default=None, metadata={
        "help": "A folder of photos of one category (class sub-folders and images/ + masks/ are understood)."})
    dataset_name: str | None = field(default=None, metadata={"help": "A 🤗 hub dataset instead of data_dir."})
    dataset_config: str | None = field(default=None, metadata={"help": "The hub dataset's configuration."})
    dataset_split: str = field(default="train", metadata={"help": "The hub dataset's split."})
    image_column: str = field(default="image", metadata={"help": "The hub dataset's image column."})
    label_column: str | None = field(default="label", metadata={
        "help": "The hub dataset's class column (pairs stay within a class when it exists)."})
    mask_dir: str | None = field(default=None, metadata={
        "help": "Foreground masks with the photos' file names (any size); weight L_rec, restrict L_CCL."})
    exclude: str | None = field(default=None, metadata={
        "help": "|-separated globs on file names to leave out, e.g. 'horse28[1-9]*|horse29*|horse300*'."})
    holdout_last: int = field(default=0, metadata={"help": "Leave out the last N files in sorted order."})
    hflip: bool = field(default=True, metadata={"help": "Random horizontal flips."})
    crop_scale: float = field(default=1.0, metadata={
        "help": "< 1: random resized crops with area in [crop_scale, 1]; 1: the whole (centre-cropped) photo."})
    cache_images: bool = field(default=False, metadata={
        "help": "Decode every photo once and keep them as uint8 on the training device."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes that decode photos."})


def to_uint8(processor: COATImageProcessor, image: Image.Image, mask: Image.Image | None = None) -> Tensor:
    """(3 or 4, S, S) uint8: the photo through the model's ``"crop"`` geometry and, when given, its mask
    (resized to the photo first, then the same geometry with nearest-neighbour resampling)."""
    pixels = processor(image, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    channels = [pixels]
    if mask is not None:
        mask = mask.convert("L").resize(image.size, Image.NEAREST)
        channels.append(processor.preprocess_mask(mask, return_tensors="pt")[0])
    return torch.cat(channels).round().clamp(0, 255).to(torch.uint8)


class PhotoSource(Dataset):
    """The training photos: item i is (i, its (C, S, S) uint8 tensor or None when unreadable)."""

    def __init__(self, options: DataOptions, config: COATConfig) -> None:
        if (options.data_dir is None) == (options.dataset_name is None):
            raise ValueError("give exactly one of --data_dir (a local image folder) or --dataset_name (a hub dataset)")
        self.processor = COATImageProcessor.from_model_config(config, "crop")
        self.hub = None
        self.masks: list[Path] | None = None
        if options.data_dir is not None:
            self._from_folder(options)
        else:
            self._from_hub(options)
        if not len(self.labels):
            raise ValueError(f"--data_dir {options.data_dir!r}: no training images (after exclude/holdout_last)"
                             if options.data_dir else f"--dataset_name {options.dataset_name!r}: no images")

    def _from_folder(self, options: DataOptions) -> None:
        root, mask_dir = image_and_mask_folders(options.data_dir, options.mask_dir)
        if mask_dir is not None and not mask_dir.is_dir():
            raise ValueError(f"--mask_dir {options.mask_dir!r} is not a folder")
        paths = find_images(root, "--data_dir")
        if options.holdout_last:
            paths = paths[: max(len(paths) - options.holdout_last, 0)]
        patterns = [p for p in (options.exclude or "").split("|") if p]
        paths = [p for p in paths if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
        classes = [image_class(p, root) or "" for p in paths]
        names = sorted(set(classes))
        self.paths = paths
        self.labels = np.array([names.index(c) for c in classes], dtype=np.int64)
        if mask_dir is not None:
            logger.info("images from %s, foreground masks from %s", root, mask_dir)
            try:
                self.masks = [find_mask(mask_dir, p, root) for p in paths]
            except FileNotFoundError as err:
                raise ValueError(f"--mask_dir {str(mask_dir)!r}: {err}") from None

    def _from_hub(self, options: DataOptions) -> None:
        import datasets

        ds = datasets.load_dataset(options.dataset_name, options.dataset_config, split=options.dataset_split)
        if options.image_column not in ds.column_names:
            raise ValueError(f"--image_column {options.image_column!r} is not among the columns {ds.column_names}")
        self.hub = ds.cast_column(options.image_column, datasets.Image(decode=False))
        self.image_column = options.image_column
        self.paths = [Path(im.get("path") or f"row{i}") for i, im in enumerate(self.hub[options.image_column])]
        has_labels = options.label_column and options.label_column in ds.column_names
        self.labels = np.asarray(ds[options.label_column] if has_labels else [0] * len(ds), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Tensor:
        """(3 or 4, S, S) uint8; raises ValueError for an unreadable file or a decompression bomb
        (:func:`coat_hf.image_io.load_image`'s checks)."""
        if self.hub is None:
            image = load_image(self.paths[index], "--data_dir", self.paths[index].name)
        else:
            data = self.hub[index][self.image_column]
            image = load_image(data.get("bytes") or data["path"], "--dataset_name", str(self.paths[index]))
        mask = None if self.masks is None else load_image(self.masks[index], "--mask_dir", self.masks[index].name)
        return to_uint8(self.processor, image, mask)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None]:
        try:
            return index, self.load(index)
        except ValueError as err:
            logger.warning("skipping unreadable image: %s", err)
            return index, None


def _collate(items: list[tuple[int, Tensor | None]]) -> list[tuple[int, Tensor | None]]:
    return items


class SampleSchedule:
    """The endless, seeded stream of sample positions (see the module docstring).

    ``labels`` (N,) are the classes of the N photos; style partners stay within a class.
    """

    def __init__(self, labels: np.ndarray, seed: int, batch_size: int, num_processes: int = 1,
                 accumulation: int = 1) -> None:
        self.size, self.seed = len(labels), seed
        self.batch_size, self.num_processes, self.accumulation = batch_size, num_processes, accumulation
        # Photos grouped by class: partner of photo i = another member of its class.
        order = np.argsort(labels, kind="stable")
        self.by_class = torch.from_numpy(order)
        self.rank_in_order = torch.from_numpy(np.argsort(order, kind="stable"))
        counts = np.bincount(labels)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.class_start = torch.from_numpy(starts[labels])
        self.class_count = torch.from_numpy(counts[labels])
        self._perms: dict[int, Tensor] = {}

    def _permutation(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.size, generator=generator)}  # keep one epoch's
        return self._perms[epoch]

    def positions(self, step: int, micro_batch: int = 0, rank: int = 0) -> Tensor:
        """(B,) int64 stream positions of micro-batch ``micro_batch`` of optimiser step ``step`` on ``rank``."""
        first = ((step * self.accumulation + micro_batch) * self.num_processes + rank) * self.batch_size
        return torch.arange(first, first + self.batch_size, dtype=torch.int64)

    def samples(self, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Content photo indices, style partner indices and keys of ``positions``, (B,) int64 each."""
        epochs, offsets = positions // self.size, positions % self.size
        content = torch.stack([self._permutation(int(e))[int(o)] for e, o in zip(epochs, offsets)])
        keys = sample_keys(self.seed, positions)
        count = self.class_count[content]
        # Another member of the class: offset 1..count-1 from the photo's own place (itself when alone).
        shift = random_bits(keys, _PARTNER_STREAM, 1)[:, 0] % (count - 1).clamp_min(1) + (count > 1).long()
        local = (self.rank_in_order[content] - self.class_start[content] + shift) % count
        return content, self.by_class[self.class_start[content] + local], keys


@dataclass
class Batch:
    """One device batch: ``content``/``style`` (B, 3, S, S) in [-1, 1], ``keys`` (B,), ``mask`` (B, 1, S, S) or None."""

    content: Tensor
    style: Tensor
    keys: Tensor
    mask: Tensor | None


def _to_batch(content: Tensor, style: Tensor, keys: Tensor, options: DataOptions, dtype: torch.dtype) -> Batch:
    """uint8 photos on the device -> augmented pixels in [-1, 1] (content and style draw different crops)."""
    content = augment_geometry(content.to(dtype) / 127.5 - 1, keys, options.hflip, options.crop_scale)
    style = augment_geometry(style.to(dtype) / 127.5 - 1, hash32(keys + 1), options.hflip, options.crop_scale)
    mask = (content[:, 3:] > 0).to(dtype) if content.shape[1] == 4 else None
    return Batch(content[:, :3], style[:, :3], keys, mask)


class TrainingData:
    """Device batches of the schedule, from photos cached on the device or decoded by a DataLoader.

    ``skipped`` counts the unreadable files met so far, each file once.
    """

    def __init__(self, source: PhotoSource, options: DataOptions, seed: int, batch_size: int,
                 device: torch.device, num_processes: int = 1, rank: int = 0, accumulation: int = 1) -> None:
        self.source, self.options, self.device, self.rank = source, options, device, rank
        self.bad: set[int] = set()
        self.cache: Tensor | None = None
        self.index = torch.arange(len(source))  # schedule index -> photo index
        if options.cache_images:
            self._fill_cache()
        global_batch = batch_size * num_processes * accumulation
        if global_batch > len(self.index):
            raise ValueError(f"--batch_size {batch_size} x {num_processes} process(es) x {accumulation} accumulation "
                             f"is larger than the {len(self.index)} training images")
        self.schedule = SampleSchedule(source.labels[self.index.numpy()], seed, batch_size, num_processes, accumulation)

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def _fill_cache(self) -> None:
        loader = DataLoader(self.source, batch_size=64, num_workers=self.options.num_workers, collate_fn=_collate)
        tensors, good = [], []
        for items in loader:
            for index, tensor in items:
                if tensor is None:
                    self.bad.add(index)
                else:
                    tensors.append(tensor)
                    good.append(index)
        if not tensors:
            raise ValueError("no readable training images")
        self.index = torch.tensor(good, dtype=torch.int64)
        cache = torch.stack(tensors)  # (N, C, S, S) uint8
        try:
            self.cache = cache.to(self.device)
        except torch.OutOfMemoryError:
            logger.warning("the %.1f GB image cache does not fit the device: keeping it in host memory",
                           cache.numel() / 1e9)
            self.cache = cache.pin_memory() if self.device.type == "cuda" else cache
        logger.info("cached %d images (%.0f MB) on %s, %d unreadable", len(good), cache.numel() / 2**20,
                    self.cache.device, len(self.bad))

    def _load_readable(self, photo: int) -> Tensor:
        """Photo ``photo`` or, when unreadable, the next readable one (uncached path)."""
        for offset in range(_MAX_REPLACEMENTS):
            index = (photo + offset) % len(self.source)
            if index in self.bad:
                continue
            _, tensor = self.source[index]
            if tensor is not None:
                return tensor
            self.bad.add(index)
        raise RuntimeError(f"{_MAX_REPLACEMENTS} consecutive unreadable images from {self.source.paths[photo]}")

    def _gather(self, indices: Tensor) -> Tensor:
        if self.cache is not None:
            return self.cache[indices.to(self.cache.device, non_blocking=True)].to(self.device, non_blocking=True)
        photos = self.index[indices]
        return torch.stack([self._load_readable(int(i)) for i in photos]).to(self.device, non_blocking=True)

    def batch(self, step: int, micro_batch: int = 0, dtype: torch.dtype = torch.float32) -> Batch:
        """The batch of micro-batch ``micro_batch`` of step ``step`` on this process."""
        content, style, keys = self.schedule.samples(self.schedule.positions(step, micro_batch, self.rank))
        content_px, style_px = self._gather(content), self._gather(style)
        return _to_batch(content_px, style_px[:, :3], keys.to(self.device, non_blocking=True), self.options, dtype)
