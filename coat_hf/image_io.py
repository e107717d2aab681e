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

import contextlib
import csv
import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import PIL.Image
import requests
from PIL import ImageOps

if TYPE_CHECKING:  # torch is not needed to load images: `import coat_hf.image_io` stays light
    from torch import Tensor


ImageInput = Union[PIL.Image.Image, str, os.PathLike, np.ndarray, bytes]

MIN_IMAGE_SIDE = 16
"""Images with a side below this many pixels are refused."""

MAX_IMAGE_PIXELS = 50_000_000
"""Images above this many pixels (50 megapixels) are refused, before decoding where the format allows
(decompression-bomb guard; PIL's own, larger limit is also turned into a ``ValueError``)."""



def _positive_setting(variable: str, default: float, kind: type) -> Any:
    """``kind(os.environ[variable])`` if set (a positive number, else ``ValueError`` naming it), else ``default``."""
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"{variable} must be a positive {kind.__name__}, got {text!r}")
    return value


DOWNLOAD_TIMEOUT: float = _positive_setting("COAT_DOWNLOAD_TIMEOUT", 20.0, float)
"""Total time allowed for one URL download, in seconds: connecting, headers and body together (default 20;
environment variable ``COAT_DOWNLOAD_TIMEOUT``). A slower download is abandoned with a ``ValueError``."""

MAX_DOWNLOAD_BYTES: int = _positive_setting("COAT_MAX_DOWNLOAD_BYTES", 100 * 2**20, int)
"""Largest URL download accepted, in bytes (default 100 MiB; environment variable ``COAT_MAX_DOWNLOAD_BYTES``)."""

_DOWNLOAD_CHUNK = 2**16
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ICO_MAGIC = b"\x00\x00\x01\x00"

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
    _check_pixels(size, name)


def _check_pixels(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{name}: the image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{MAX_IMAGE_PIXELS:,} (coat_hf.image_io.MAX_IMAGE_PIXELS)"
        )


def _read_url(url: str, name: str, label: str, timeout: float, limit: int, stop: threading.Event) -> bytes:
    """The body of ``url``, refused above ``limit`` bytes; gives up early once ``stop`` is set."""
    too_large = ValueError(f"{name}: {label} is larger than {limit:,} bytes (coat_hf.image_io.MAX_DOWNLOAD_BYTES)")
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                raise too_large
            data, size = [], 0
            # read1: at most one socket read per call, so a server that drips bytes meets ``stop`` soon.
            while size <= limit and not stop.is_set() and (
                    chunk := response.raw.read1(_DOWNLOAD_CHUNK, decode_content=True)):
                data.append(chunk)
                size += len(chunk)
    except (requests.RequestException, OSError) as err:
        raise ValueError(f"{name}: could not download {label}: {err}") from None
    if size > limit:
        raise too_large
    if not data:
        raise ValueError(f"{name}: {label} returned no data")
    return b"".join(data)


def _fetch(url: str, name: str, label: str) -> io.BytesIO:
    """Download ``url`` into memory: at most :data:`MAX_DOWNLOAD_BYTES`, within :data:`DOWNLOAD_TIMEOUT` seconds.

    The download runs in a daemon thread so that the deadline holds whatever the server does (a server that
    drips bytes defeats per-read timeouts); past it the caller gets a ``ValueError`` and the thread stops at
    its next read.
    """
    timeout, limit = DOWNLOAD_TIMEOUT, MAX_DOWNLOAD_BYTES
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def download() -> None:
        try:
            outcome["data"] = _read_url(url, name, label, timeout, limit, stop)
        except Exception as err:  # handed to the caller's thread (urllib3's read errors among them)
            outcome["error"] = err

    thread = threading.Thread(target=download, name="coat-download", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stop.set()
        raise ValueError(f"{name}: downloading {label} took longer than {timeout:g} s "
                         "(coat_hf.image_io.DOWNLOAD_TIMEOUT)")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ValueError):
            raise ValueError(str(error)) from None
        raise ValueError(f"{name}: could not download {label}: {error}") from None
    return io.BytesIO(outcome["data"])


def _check_ico_frames(source: str | io.BytesIO, name: str) -> None:
    """Refuse an ICO file whose frames hold more than :data:`MAX_IMAGE_PIXELS` pixels.

    An ICO directory, and so PIL's ``size``, may understate the PNG or BMP frames it points at, and PIL decodes
    the frame as it opens the file; so the frames' own headers are read first.
    """
    with open(source, "rb") if isinstance(source, str) else contextlib.nullcontext(source) as fp:
        header = fp.read(6)
        if header[:4] == _ICO_MAGIC:
            directory = fp.read(16 * int.from_bytes(header[4:6], "little"))
            for entry in range(len(directory) // 16):
                fp.seek(int.from_bytes(directory[16 * entry + 12 : 16 * entry + 16], "little"))
                frame = fp.read(24)
                if frame[:8] == _PNG_MAGIC and len(frame) == 24:
                    _check_pixels(struct.unpack(">II", frame[16:24]), name)  # IHDR width, height
                elif len(frame) >= 12:
                    width, height = struct.unpack("<ii", frame[4:12])  # BITMAPINFOHEADER; height counts the mask
                    _check_pixels((abs(width), abs(height) // 2), name)
        fp.seek(0)


def _open(source: str | io.BytesIO, name: str, label: str) -> PIL.Image.Image:
    """PIL's lazy open (reads the header only), with the size checked before any pixel is decoded."""
    try:
        _check_ico_frames(source, name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(source)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise ValueError(f"{name}: {label} is too large to decode safely: {err}") from None
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{name}: {label} is not an image PIL can read") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read {label}: {err.strerror or err}") from None
    _check_size(image.size, name)
    return image


def load_image(image: ImageInput, name: str = "image", label: str | None = None) -> PIL.Image.Image:
    """Load and check one input image; returns an 8-bit RGB PIL image, upright per its EXIF orientation.

    Args:
        image: a PIL image, a file path, an ``http(s)://`` URL, the bytes of an image file, or a numpy array
            (H, W) or (H, W, C) uint8 with C in 1, 3, 4.
        name: the argument's name, which starts every error message.
        label: how error messages refer to a file or URL (default: the path or URL itself); a server that
            must not show its paths passes the file's public name.

    Raises:
        ValueError: missing, empty, truncated or non-image file, failed or too slow (:data:`DOWNLOAD_TIMEOUT`) or
            too large (:data:`MAX_DOWNLOAD_BYTES`) download, unsupported type, a side below
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
        label = source if label is None else label
        if source.startswith(("http://", "https://")):
            image = _open(_fetch(source, name, label), name, label)
        else:
            path = Path(source)
            if not path.exists():
                raise ValueError(f"{name}: file not found: {label}")
            if not path.is_file():
                raise ValueError(f"{name}: not a file: {label}")
            if path.stat().st_size == 0:
                raise ValueError(f"{name}: the file is empty: {label}")
            image = _open(source, name, label)
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
        ValueError, starting with ``name``: the file is missing, is not UTF-8, is not valid CSV (a field over
            csv's 128 KiB limit included), lacks a column, has an empty content or style cell, or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: file not found: {path}")

    def resolve(value: str) -> str:
        return value if value.startswith(("http://", "https://")) else str(path.parent / value)

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = []
        try:
            columns = set(reader.fieldnames or ())
            if not {"content", "style"} <= columns:
                raise ValueError(f"{name}: {path} needs the columns content,style[,output]; got {sorted(columns)}")
            for row in reader:
                content, style = (row.get("content") or "").strip(), (row.get("style") or "").strip()
                if not content or not style:
                    raise ValueError(f"{name}: {path} line {reader.line_num}: empty content or style")
                rows.append(PairRow(reader.line_num, resolve(content), resolve(style),
                                    (row.get("output") or "").strip() or None))
        except csv.Error as err:  # e.g. a field over csv's 128 KiB limit; raised before the line is counted
            raise ValueError(f"{name}: {path} line {reader.line_num + 1}: {err}") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{name}: {path} is not UTF-8 text ({err.reason})") from None
    if not rows:
        raise ValueError(f"{name}: {path} has no pairs")
    return rows
