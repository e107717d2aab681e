"""COAT's image processor: images -> the model's ``pixel_values``, saved with the model (``preprocessor_config.json``).

Two geometries, both to the model's square ``image_size`` S:

* ``"resize"`` (the pipeline's): the whole image resized to S x S; the aspect ratio is not kept and nothing is
  cut off (aligned faces and animal faces lose nothing);
* ``"crop"`` (training's and the evaluation's): the short side resized to S and the centre S x S cut out; the
  object keeps its aspect ratio.

Then pixels are scaled to [-1, 1] (mean = std = 0.5). Images are best loaded with
:func:`coat_hf.image_io.load_image` first, which checks them and applies their EXIF orientation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

if TYPE_CHECKING:
    from .configuration_coat import COATConfig

Geometry = Literal["resize", "crop"]
GEOMETRIES: tuple[str, ...] = ("resize", "crop")


class COATImageProcessor(PilBackend):
    r"""Resizes (or resizes and centre-crops) images to the model's square size and scales them to [-1, 1].

    ``processor(images, return_tensors="pt")["pixel_values"]``: (B, 3, S, S) float. Build it for a model with
    :meth:`from_model_config`; ``save_pretrained``/``from_pretrained`` store it beside the model, and
    ``AutoImageProcessor`` finds it (``import coat_hf`` registers it).

    Args (besides those of transformers' image processors):
        size: ``{"height": S, "width": S}`` for the ``"resize"`` geometry, ``{"shortest_edge": S}`` with
            ``do_center_crop=True`` and ``crop_size={"height": S, "width": S}`` for ``"crop"``.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 64, "width": 64}
    do_resize = True
    do_center_crop = False
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_convert_rgb = True

    @classmethod
    def from_model_config(cls, config: COATConfig, geometry: Geometry = "resize", **kwargs: Any) -> COATImageProcessor:
        """The processor for a model of ``config`` (its ``image_size``) with the given geometry (see the module)."""
        side = config.image_size
        if geometry == "resize":
            return cls(size={"height": side, "width": side}, do_center_crop=False, **kwargs)
        if geometry == "crop":
            return cls(size={"shortest_edge": side}, do_center_crop=True, crop_size={"height": side, "width": side},
                       **kwargs)
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")

    def preprocess_mask(self, mask: Any, **kwargs: Any) -> Any:
        """A single-channel mask (a PIL image, or (H, W) array) through the same geometry: nearest-neighbour
        resampling, values kept (no scaling). Returns (B, 1, S, S) with ``return_tensors="pt"``."""
        return self(mask, resample=PILImageResampling.NEAREST, do_rescale=False, do_normalize=False,
                    do_convert_rgb=False, **kwargs)["pixel_values"]


__all__ = ["COATImageProcessor"]
