"""COAT's image and data layer: loading and checking images, finding images, class sub-folders and masks in
folders, and reading pairs files.

The pipeline, the command line, the app, the evaluation and training all read images through this module:
:data:`IMAGE_EXTENSIONS` is the one list of image file extensions, :func:`find_images` the one folder walk
(class sub-folders included), :func:`find_mask` the one mask lookup and :func:`read_pairs_csv` the one reader
of ``content,style[,output]`` CSV files. The geometry that turns a loaded image into the model's input belongs
to the image processor saved with the model, :class:`~coat_hf.image_processing_coat.COATImageProcessor`.

Every loading failure becomes a ``ValueError`` whose message starts with the argument's name
(``"content: ..."``, ``"style: ..."``), so callers never see a traceback from deep inside PIL or torch.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import PIL.Image
import requests
from PIL import ImageOps

if TYPE_CHECKING:  # torch is not needed to load images: `import coat_hf.image_io` stays light
    from torch import Tensor

logger = logging.getLogger(__name__)

ImageInput = Union[PIL.Image.Image, str, os.PathLike, np.ndarray, bytes]

MIN_IMAGE_SIDE = 16
"""Images with a side below this many pixels are refused."""

MAX_IMAGE_PIXELS = 50_000_000
"""Images above this many pixels (50 megapixels) are refused, before decoding where the format allows
(decompression-bomb guard; PIL's own, larger limit is also turned into a ``ValueError``)."""

MAX_DOWNLOAD_BYTES = 100 * 2**20
"""Largest URL download accepted (100 MiB)."""

REQUEST_TIMEOUT_S = 60
"""Seconds a URL download may wait for the server to connect or send (as diffusers' ``load_image``)."""

OUTPUT_SIZES = ("content", "model")
"""How a result is sized: like the content image, or the model's square ``image_size``."""

_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit, and 32-bit integer greyscale


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode -> 8-bit RGB.

    Transparent images (RGBA, LA, palette with transparency) are composited onto white; 16-bit and 32-bit
    integer greyscale is scaled to 8 bits (not clipped); greyscale, palette and CMYK are expanded.
    """
    if image.mode in _INTEGER_MODES:
        values = np.asarray(image).astype(np.float64)  # (H, W)
        if image.mode != "I" or values.max() > 255:
            values = values / 257.0  # 65535 -> 255
        image = PIL.Image.fromarray(values.clip(0, 255).round().astype(np.uint8))
    elif image.mode == "F":
        image = PIL.Image.fromarray(np.asarray(image).clip(0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name}: the image is {width}x{height}; both sides must be at least {MIN_IMAGE_SIDE} px")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{name}: the image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{MAX_IMAGE_PIXELS:,} (coat_hf.image_io.MAX_IMAGE_PIXELS)"
        )


def _fetch(url: str, name: str) -> io.BytesIO:
    """Download ``url`` (at most :data:`MAX_DOWNLOAD_BYTES`) into memory."""
    try:
        with requests.get(url, stream=True, timeout=REQUEST_TIMEOUT_S) as response:
            response.raise_for_status()
            data = response.raw.read(MAX_DOWNLOAD_BYTES + 1, decode_content=True)
    except requests.RequestException as err:
        raise ValueError(f"{name}: could not download {url}: {err}") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"{name}: {url} is larger than {MAX_DOWNLOAD_BYTES:,} bytes")
    if not data:
        raise ValueError(f"{name}: {url} returned no data")
    return io.BytesIO(data)


def _open(source: str | io.BytesIO, name: str, label: str) -> PIL.Image.Image:
    """PIL's lazy open (reads the header only), with the size checked before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(source)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise ValueError(f"{name}: {label} is too large to decode safely: {err}") from None
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{name}: {label} is not an image PIL can read") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read {label}: {err}") from None
    _check_size(image.size, name)
    return image


def load_image(image: ImageInput, name: str = "image") -> PIL.Image.Image:
    """Load and check one input image; returns an 8-bit RGB PIL image, upright per its EXIF orientation.

    Args:
        image: a PIL image, a file path, an ``http(s)://`` URL, the bytes of an image file, or a numpy array
            (H, W) or (H, W, C) uint8 with C in 1, 3, 4.
        name: the argument's name, which starts every error message.

    Raises:
        ValueError: missing, empty, truncated or non-image file, failed download, unsupported type, a side below
            :data:`MIN_IMAGE_SIDE` or more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(
                f"{name}: numpy arrays must be uint8 of shape (H, W) or (H, W, C) with C in 1, 3, 4; got "
                f"{image.dtype} {image.shape}"
            )
        _check_size((image.shape[1], image.shape[0]), name)
        image = PIL.Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    elif isinstance(image, PIL.Image.Image):
        _check_size(image.size, name)
    elif isinstance(image, (bytes, bytearray)):
        image = _open(io.BytesIO(image), name, "the image data")
    elif isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if source.startswith(("http://", "https://")):
            image = _open(_fetch(source, name), name, source)
        else:
            path = Path(source)
            if not path.exists():
                raise ValueError(f"{name}: file not found: {source}")
            if not path.is_file():
                raise ValueError(f"{name}: not a file: {source}")
            if path.stat().st_size == 0:
                raise ValueError(f"{name}: the file is empty: {source}")
            image = _open(source, name, source)
    else:
        raise ValueError(
            f"{name}: expected a PIL image, a file path, a URL, image bytes or a uint8 numpy array, got "
            f"{type(image).__name__}"
        )
    try:
        # EXIF orientation, then the conversion to RGB. Decodes.
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, EOFError) as err:
        raise ValueError(f"{name}: the image is truncated or corrupt: {err}") from None


def to_pil(pixel_values: Tensor) -> PIL.Image.Image:
    """(3, H, W) in [-1, 1] (any float dtype) -> RGB PIL image; values outside are clipped."""
    rgb = ((pixel_values.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()  # (3, H, W) uint8
    return PIL.Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy())


def load_image_or_skip(image: ImageInput, name: str = "image") -> PIL.Image.Image | None:
    """:func:`load_image`, but an unreadable image (missing, truncated, not an image, a decompression bomb, ...)
    is logged as a warning and gives ``None``: for datasets that pass over bad files."""
    try:
        return load_image(image, name)
    except ValueError as err:
        logger.warning("skipping an unreadable image: %s", err)
        return None


# --- Folders, class sub-folders and masks --------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
"""The file extensions (lower case) taken as images wherever a folder is read."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file with one of the :data:`IMAGE_EXTENSIONS`."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def find_images(folder: str | os.PathLike, name: str = "data folder") -> list[Path]:
    """The image files of ``folder`` and of its sub-folders (class folders such as ``afhq/{cat,dog,wild}``),
    sorted by their path relative to ``folder``. Hidden files and folders are left out.

    Raises:
        ValueError: ``folder`` is not a folder (the message starts with ``name``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{name}: not a folder: {folder}")
    images = [p for p in folder.rglob("*")
              if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix())


def image_class(path: str | os.PathLike, folder: str | os.PathLike) -> str | None:
    """The class of an image found by :func:`find_images`: the name of the sub-folder holding it, or ``None`` for
    an image directly in ``folder``."""
    parent = Path(path).relative_to(folder).parent
    return None if parent == Path() else parent.name


def image_and_mask_folders(data_dir: str | os.PathLike,
                           mask_dir: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Where images and their masks are: a ``data_dir`` with ``images/`` and ``masks/`` sub-folders (e.g.
    ``horses/``) means both, unless ``mask_dir`` is given."""
    root = Path(data_dir)
    if mask_dir is None and (root / "images").is_dir() and (root / "masks").is_dir():
        return root / "images", root / "masks"
    return root, None if mask_dir is None else Path(mask_dir)


def find_mask(mask_dir: str | os.PathLike, image_path: str | os.PathLike,
              folder: str | os.PathLike | None = None) -> Path:
    """The mask of ``image_path``: the file with the same stem and any image extension in ``mask_dir`` (in the
    same class sub-folder there first, when ``folder`` is the image folder that ``image_path`` was found in).

    Raises:
        FileNotFoundError: no such file.
    """
    image_path, mask_dir = Path(image_path), Path(mask_dir)
    places = [mask_dir]
    if folder is not None and image_path.parent != Path(folder):
        places.insert(0, mask_dir / image_path.relative_to(folder).parent)
    for place in places:
        for extension in dict.fromkeys((image_path.suffix, *IMAGE_EXTENSIONS)):
            candidate = place / f"{image_path.stem}{extension}"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no mask for {image_path.name} in {mask_dir}")


# --- Pairs files ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairRow:
    """One row of a pairs file: its line number, the content and style images (paths resolved against the
    file's folder, URLs as written) and the ``output`` cell (as written; ``None`` when empty or absent)."""

    line: int
    content: str
    style: str
    output: str | None = None


def read_pairs_csv(path: str | os.PathLike, name: str = "pairs") -> list[PairRow]:
    """The rows of a CSV with the columns ``content,style[,output]`` (UTF-8, a byte-order mark allowed).

    Relative image paths are read from the CSV's folder; ``http(s)://`` URLs are kept. Used by
    ``coat-transfer --pairs`` and the app's ``--examples`` folder (``pairs.csv``).

    Raises:
        ValueError, starting with ``name``: the file is missing, lacks a column, has an empty content or style
            cell, or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: file not found: {path}")

    def resolve(value: str) -> str:
        return value if value.startswith(("http://", "https://")) else str(path.parent / value)

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        if not {"content", "style"} <= columns:
            raise ValueError(f"{name}: {path} needs the columns content,style[,output]; got {sorted(columns)}")
        rows = []
        for row in reader:
            content, style = (row.get("content") or "").strip(), (row.get("style") or "").strip()
            if not content or not style:
                raise ValueError(f"{name}: {path} line {reader.line_num}: empty content or style")
            rows.append(PairRow(reader.line_num, resolve(content), resolve(style),
                                (row.get("output") or "").strip() or None))
    if not rows:
        raise ValueError(f"{name}: {path} has no pairs")
    return rows
