"""Example photo pairs of a model's own category, from photos that installed packages ship (nothing is downloaded).

A model folder may hold an ``examples.json``::

    {"photos": {"hopper": {"package": "matplotlib", "file": "mpl-data/sample_data/grace_hopper.jpg",
                           "crop": [105, 46, 415, 356]}, ...},
     "pairs": [["hopper", "astronaut"], ...]}

``crop`` (left, top, right, bottom, in pixels of the photo) frames the object as the model's training photos
did (aligned faces, cat faces). A photo whose package is not installed leaves its pairs out. The app shows these
pairs beside the user's own ``--examples``; ``docs/make_examples.py`` renders them for the README.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import PIL.Image

from ..image_io import load_image
from . import resolve_model

EXAMPLES_FILE = "examples.json"


@dataclass(frozen=True)
class ExamplePhoto:
    """A photo inside an installed package, with the crop that frames its object."""

    name: str
    path: Path
    crop: tuple[int, int, int, int] | None = None

    def load(self) -> PIL.Image.Image:
        """The photo as 8-bit RGB, cropped (:func:`coat_hf.image_io.load_image` checks it)."""
        image = load_image(self.path, self.name, label=self.path.name)
        return image.crop(self.crop) if self.crop else image


def _package_file(package: str, file: str) -> Path | None:
    """``file`` inside installed ``package``, or ``None`` when the package or the file is missing."""
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise ValueError(f"{EXAMPLES_FILE}: {file!r} must be a path inside the package {package!r}")
    try:
        path = resources.files(package).joinpath(file)
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def model_examples(name_or_path: str | os.PathLike | None = None) -> list[tuple[ExamplePhoto, ExamplePhoto]]:
    """The (content, style) example pairs of a model (a bundled name or a local folder; ``None`` is the default
    model) whose photos this install has; none for a model without ``examples.json`` (a Hub id, a new run)."""
    table = Path(resolve_model(name_or_path)) / EXAMPLES_FILE
    if not table.is_file():
        return []
    spec = json.loads(table.read_text(encoding="utf-8"))
    photos = {}
    for name, photo in spec["photos"].items():
        path = _package_file(photo["package"], photo["file"])
        if path is not None:
            crop = photo.get("crop")
            photos[name] = ExamplePhoto(name, path, tuple(crop) if crop else None)
    return [(photos[content], photos[style]) for content, style in spec["pairs"]
            if content in photos and style in photos]
