"""The ``coat-appearance-transfer`` pipeline: ``pipeline("coat-appearance-transfer")(content, style)``.

``import coat_hf`` registers the task with transformers (transformers has no plugin hook that would do it
without the import). Without a ``model`` argument the pipeline loads the bundled default model from the
installed package, offline (see :mod:`coat_hf.pretrained`).
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from transformers.utils import logging

from .color import match_color
from .image_io import OUTPUT_SIZES, ImageInput, load_image, to_pil
from .image_processing_coat import COATImageProcessor
from .modeling_coat import COATModel
from .pretrained import DEFAULT_MODEL, UNTRAINED_MODEL, is_untrained, resolve_model
from .visualization import confidence_map, correspondence_to_matches, draw_matches

logger = logging.get_logger(__name__)

TASK = "coat-appearance-transfer"
SEED_RANGE = (-(2**63), 2**64 - 1)
"""Seeds ``torch.Generator.manual_seed`` takes."""


def _as_int(value: Any) -> Any:
    """Integers of any kind (NumPy's included) as a Python ``int``; anything else (bools too) as it is."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _pair(item: Any, index: int | None = None) -> dict:
    """One pair from a ``{"content": ..., "style": ...}`` dict or a ``(content, style)`` tuple."""
    where = "inputs" if index is None else f"inputs[{index}]"
    if isinstance(item, Mapping):
        if set(item) != {"content", "style"}:
            raise ValueError(
                f"{where}: a pair is a dict with exactly the keys 'content' and 'style', got {sorted(item)}"
            )
        content, style = item["content"], item["style"]
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        content, style = item
    else:
        raise ValueError(f"{where}: expected a {{'content': ..., 'style': ...}} dict or a (content, style) tuple, "
                         f"got {type(item).__name__}")
    return {"content": content, "style": style, "index": index}


def _as_pairs(content: Any, style: Any) -> tuple[list[dict], bool]:
    """The call's inputs as a list of pairs, and whether it was a single pair (to return a dict, not a list)."""
    if isinstance(content, Mapping):
        if style is not None:
            raise ValueError("style: pass either p(content, style) or p({'content': ..., 'style': ...}), not both")
        return [_pair(content)], True
    if isinstance(content, (list, tuple)):
        if style is None:
            return [_pair(item, i) for i, item in enumerate(content)], False
        if not isinstance(style, (list, tuple)) or len(style) != len(content):
            raise ValueError("style: with a list of content images, pass a list of style images of the same length")
        return [{"content": c, "style": s, "index": i} for i, (c, s) in enumerate(zip(content, style))], False
    if style is None:
        raise ValueError("style: missing; call p(content, style) or p({'content': ..., 'style': ...})")
    return [{"content": content, "style": style, "index": None}], True


def _collate(items: list[dict]) -> dict:
    """Preprocessed pairs -> a batch: tensors concatenated along dim 0, everything else in lists."""
    return {key: torch.cat([item[key] for item in items]) if isinstance(items[0][key], Tensor)
            else [item[key] for item in items] for key in items[0]}


class COATAppearanceTransferPipeline(Pipeline):
    """Re-render the content image's object with the style image's appearance (COAT, BMVC 2022).

    ``p(content, style, **params)``, ``p({"content": ..., "style": ...})``, ``p([pair, pair, ...])`` or
    ``p([content, ...], [style, ...])``. Images are PIL images, file paths, ``http(s)://`` URLs or uint8
    numpy arrays (H, W[, C]); see :func:`coat_hf.image_io.load_image` for the rules and limits. The image
    processor saved with the model (``preprocessor_config.json``; without one,
    ``COATImageProcessor.from_model_config(model.config)``) makes the model's inputs: each image resized as a
    whole (aspect ratio not kept) to the model's square ``image_size``.

    Args (per call or at construction):
        n: content modulation layers, 0..K (default ``model.config.default_n``); smaller n takes more of the
            style's appearance, n = K reproduces the content.
        output_size: ``"content"`` (default) resizes the result to the content image's width and height;
            ``"model"`` keeps the model's square ``image_size``.
        return_correspondence: add ``"correspondence"``: ``{"image": picture of the matches, "matches":
            per-scale matches (see :mod:`coat_hf.visualization`), "confidence": (H, W) tensor, the drawn
            scale's confidence Q resized to the result}``.
        correspondence_scale: which feature scale the picture and ``confidence`` show (default: see
            :func:`coat_hf.visualization.default_scale`).
        seed: seeds the decoder's noise. Each pair gets its own generator seeded with ``seed``, so a pair's
            result does not depend on the batch size or on the other pairs of the call.
        alignment: how the style's features are aligned to the content's: ``"mutual"`` (the paper's Eq. 3:
            style features only at mutual nearest neighbours), ``"nearest"`` (every content position takes its
            nearest style feature) or ``"soft"`` (confidence-weighted soft matches); default
            ``model.config.alignment``.
        color_match: ``True`` gives the result the style image's colour statistics afterwards (Reinhard's
            transfer in Lab, :func:`coat_hf.color.match_color`; default ``False``). Beyond the paper: today's
            models keep too little of the style's global colour, and this restores it at the cost of the n
            sweep's range (README, "Colour matching").
        batch_size, num_workers: as for every transformers pipeline.

    Returns:
        A dict per pair, ``{"image": PIL.Image}`` plus ``"correspondence"`` when asked; a list of them for a
        list of pairs.
    """

    _load_processor = False
    _load_image_processor = None  # the model folder's preprocessor_config.json when there is one
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, model: COATModel, **kwargs: Any) -> None:
        if not isinstance(model, COATModel):
            raise ValueError(f"model: the {TASK} pipeline needs a COATModel, got {type(model).__name__}")
        dtype_asked = kwargs.get("dtype", "auto") != "auto"
        super().__init__(model, **kwargs)
        if not dtype_asked and self.device.type == "cpu" and self.model.dtype == torch.float16:
            # float16 weights (half the download) run several times slower than float32 on CPUs.
            logger.info("float16 model on the CPU: running in float32 (pass dtype=torch.float16 to keep it)")
            self.model.float()
        if self.image_processor is None:
            self.image_processor = COATImageProcessor.from_model_config(model.config)
        elif not isinstance(self.image_processor, COATImageProcessor):
            raise ValueError(f"image_processor: the {TASK} pipeline needs a COATImageProcessor, got "
                             f"{type(self.image_processor).__name__}")
        if is_untrained(model.name_or_path):
            logger.warning(
                f"The {TASK} pipeline is using {UNTRAINED_MODEL!r}, an UNTRAINED placeholder bundled until the "
                f"trained default {DEFAULT_MODEL!r} ships: its outputs are not meaningful transfers."
            )

    def __call__(self, content: ImageInput | Mapping | Sequence, style: ImageInput | Sequence | None = None,
                 **kwargs: Any) -> dict | list[dict]:
        """Transfer ``style``'s appearance onto ``content``; see the class docstring for the forms and parameters."""
        pairs, single = _as_pairs(content, style)
        if not pairs:
            return []
        outputs = super().__call__(pairs, **kwargs)  # a list input: batched through self.get_iterator
        return outputs[0] if single else outputs

    def _sanitize_parameters(
        self,
        n: int | None = None,
        output_size: str | None = None,
        return_correspondence: bool | None = None,
        correspondence_scale: int | None = None,
        seed: int | None = None,
        alignment: str | None = None,
        color_match: bool | None = None,
    ) -> tuple[dict, dict, dict]:
        forward_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        n, correspondence_scale, seed = _as_int(n), _as_int(correspondence_scale), _as_int(seed)
        if n is not None:
            forward_params["n"] = self.model._check_n(n)
        if output_size is not None:
            if output_size not in OUTPUT_SIZES:
                raise ValueError(f"output_size must be one of {OUTPUT_SIZES}, got {output_size!r}")
            postprocess_params["output_size"] = output_size
        if return_correspondence is not None:
            if not isinstance(return_correspondence, bool):
                raise ValueError(f"return_correspondence must be True or False, got {return_correspondence!r}")
            forward_params["return_correspondence"] = return_correspondence
            postprocess_params["return_correspondence"] = return_correspondence
        if correspondence_scale is not None:
            num_scales = self.model.config.num_scales
            if isinstance(correspondence_scale, bool) or not isinstance(correspondence_scale, int) or not (
                0 <= correspondence_scale < num_scales
            ):
                raise ValueError(
                    f"correspondence_scale must be an integer in [0, {num_scales}), got {correspondence_scale!r}"
                )
            postprocess_params["correspondence_scale"] = correspondence_scale
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
                raise ValueError(f"seed must be an integer from -2**63 to 2**64 - 1, got {seed!r}")
            forward_params["seed"] = seed
        if alignment is not None:
            forward_params["alignment"] = self.model._check_alignment(alignment)
        if color_match is not None:
            if not isinstance(color_match, bool):
                raise ValueError(f"color_match must be True or False, got {color_match!r}")
            forward_params["color_match"] = color_match
        return {}, forward_params, postprocess_params

    def preprocess(self, pair: dict) -> dict[str, Any]:
        """Load and check both images; the image processor makes the model's inputs, (1, 3, S, S) in [-1, 1]."""
        where = "" if pair["index"] is None else f" (inputs[{pair['index']}])"
        content = load_image(pair["content"], "content" + where)
        style = load_image(pair["style"], "style" + where)
        pixel_values = self.image_processor([content, style], return_tensors="pt")["pixel_values"]  # (2, 3, S, S)
        return {
            "content_pixel_values": pixel_values[:1],
            "style_pixel_values": pixel_values[1:],
            "content_image": content,
            "style_image": style,
        }

    def _forward(self, batch: dict[str, Any], n: int | None = None, seed: int | None = None,
                 return_correspondence: bool = False, alignment: str | None = None,
                 color_match: bool = False) -> list[dict[str, Any]]:
        """One model call for the batch; returns one dict per pair."""
        content = batch["content_pixel_values"].to(self.model.dtype)  # (B, 3, S, S)
        style = batch["style_pixel_values"].to(self.model.dtype)
        # CPU generators: the same seed draws the same noise on every device.
        generator = None if seed is None else [torch.Generator().manual_seed(seed) for _ in range(content.shape[0])]
        out = self.model(content, style, n=n, output_correspondence=return_correspondence, generator=generator,
                         alignment=alignment)
        images = match_color(out.images, style) if color_match else out.images  # (B, 3, S, S) in [-1, 1]
        results = []
        for b in range(content.shape[0]):
            result = {"image": images[b], "content_image": batch["content_image"][b],
                      "style_image": batch["style_image"][b]}
            if return_correspondence:
                result["matches"] = correspondence_to_matches(out.correspondences, b)
            results.append(result)
        return results

    def postprocess(self, result: dict[str, Any], output_size: str = "content", return_correspondence: bool = False,
                    correspondence_scale: int | None = None) -> dict[str, Any]:
        image = to_pil(result["image"])
        if output_size == "content":
            image = image.resize(result["content_image"].size, PIL.Image.Resampling.LANCZOS)
        output: dict[str, Any] = {"image": image}
        if return_correspondence:
            matches = result["matches"]
            output["correspondence"] = {
                "image": draw_matches(result["content_image"], result["style_image"], matches, correspondence_scale),
                "matches": matches,
                "confidence": confidence_map(matches, image.size, correspondence_scale),
            }
        return output

    def get_iterator(self, inputs: list[dict], num_workers: int, batch_size: int, preprocess_params: dict,
                     forward_params: dict, postprocess_params: dict) -> PipelineIterator:
        """Batches of ``batch_size`` pairs, stacked by :func:`_collate` (the base class pads token sequences,
        which this pipeline has none of); ``_forward`` splits each batch back into pairs."""
        dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
        batches = PipelineIterator(loader, self.forward, forward_params)
        return PipelineIterator(itertools.chain.from_iterable(batches), self.postprocess, postprocess_params)


def register_pipeline() -> None:
    """Register the task with transformers; the default model is the bundled one, loaded from a local folder."""
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=COATAppearanceTransferPipeline,
        pt_model=AutoModel,
        default={"model": (resolve_model(None), None)},
        type="image",
    )
