"""Loading and checking input images, and converting between PIL images and COAT's pixel values.

Every loading failure becomes a ``ValueError`` whose message starts with the argument's name
(``"content: ..."``, ``"style: ..."``), so callers never see a traceback from deep inside PIL or torch.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import PIL.Image
import requests
from PIL import ImageOps

if TYPE_CHECKING:  # torch is imported where tensors are made: `import coat_hf.image_io` stays light
    from torch import Tensor
    from torchvision.transforms import v2

ImageInput = Union[PIL.Image.Image, str, os.PathLike, np.ndarray]

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
        image: a PIL image, a file path, an ``http(s)://`` URL, or a numpy array (H, W) or (H, W, C) uint8
            with C in 1, 3, 4.
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
            f"{name}: expected a PIL image, a file path, a URL or a uint8 numpy array, got {type(image).__name__}"
        )
    try:
        # EXIF orientation, then the conversion to RGB. Decodes.
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, EOFError) as err:
        raise ValueError(f"{name}: the image is truncated or corrupt: {err}") from None


def pixel_transform(image_size: int) -> v2.Compose:
    """RGB PIL image -> (3, S, S) float in [-1, 1]: the whole image resized to S x S (aspect ratio not kept)."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])


def to_pil(pixel_values: Tensor) -> PIL.Image.Image:
    """(3, H, W) in [-1, 1] (any float dtype) -> RGB PIL image; values outside are clipped."""
    rgb = ((pixel_values.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()  # (3, H, W) uint8
    return PIL.Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy())
