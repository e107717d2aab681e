"""Appearance-transfer methods compared by the evaluation, all behind one interface.

A method maps a content and a style image, (B, 3, S, S) in [-1, 1], to a result of the same shape;
adding a method is one subclass of :class:`TransferMethod`. ``family`` groups methods in the report
(the COAT sweep over n is drawn as one curve).

* ``coat n=…``: COAT (alignment on) with the first n modulation layers from the content.
* ``latent-swap``: the same model without alignment (Eq. 3 skipped), the swapping-autoencoder family.
* ``warp``: the image-warping family: every content position of E's map at ``scale`` takes its nearest
  style position (Eq. 1, ``find_correspondence``), and the style's pixel block under that position
  (s x s pixels, s = S / map size) is copied there: ``pixel_unshuffle`` -> gather -> ``pixel_shuffle``.
* ``color-transfer``: Reinhard et al. (2001) in Lab: ``out = (x − μ_content) σ_style / σ_content + μ_style``
  per channel, statistics over the whole image.
* ``coat n=… + color match`` (``--color-match``): COAT's result with the style's Lab statistics, Reinhard's transfer
  applied to it (the pipeline's ``color_match=True``).
* ``content`` / ``style``: the inputs themselves, the two ends of the trade-off.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from ..color import match_color
from ..correspondence import find_correspondence
from ..modeling_coat import COATModel


class TransferMethod(ABC):
    """(content, style) -> result, each (B, 3, S, S) in [-1, 1]. ``generator`` seeds any randomness."""

    name: str
    family: str
    n: int | None = None

    @abstractmethod
    def __call__(self, content: Tensor, style: Tensor, generator: torch.Generator | None = None) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class InputImage(TransferMethod):
    """Returns the content or the style image unchanged: the bounds of the structure/appearance trade-off."""

    def __init__(self, which: str) -> None:
        if which not in ("content", "style"):
            raise ValueError(f"which must be 'content' or 'style', got {which!r}")
        self.name = self.family = which

    def __call__(self, content: Tensor, style: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return content if self.name == "content" else style


class COATTransfer(TransferMethod):
    """The COAT model at one n (and ``alignment`` rule); ``use_alignment=False`` is the latent-swapping baseline."""

    def __init__(self, model: COATModel, n: int | None = None, use_alignment: bool = True,
                 alignment: str | None = None) -> None:
        self.model = model
        self.n = model.config.default_n if n is None else n
        self.use_alignment = use_alignment
        self.alignment = model._check_alignment(alignment)
        self.family = "coat" if use_alignment else "latent-swap"
        self.name = f"coat n={self.n}" if use_alignment else "latent-swap"

    def __call__(self, content: Tensor, style: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.model(content, style, n=self.n, generator=generator, use_alignment=self.use_alignment,
                          alignment=self.alignment).images


class FeatureWarp(TransferMethod):
    """Style pixels warped onto the content by dense nearest neighbours of E's features at one ``scale``."""

    family = "warp"

    def __init__(self, model: COATModel, scale: int = 1) -> None:
        if not 0 <= scale < model.config.num_scales:
            raise ValueError(f"scale must be in [0, {model.config.num_scales}), got {scale}")
        self.model, self.scale = model, scale
        self.name = "warp"

    def __call__(self, content: Tensor, style: Tensor, generator: torch.Generator | None = None) -> Tensor:
        content_feat = self.model.encode(content)[self.scale]  # (B, C, h, w)
        style_feat = self.model.encode(style)[self.scale]
        nearest = find_correspondence(content_feat, style_feat, self.model.config.alignment_block_size,
                                      self.model.config.alignment_kernel).nearest  # (B, h·w)
        block = content.shape[-1] // content_feat.shape[-1]
        patches = F.pixel_unshuffle(style, block).flatten(2)  # (B, 3·s·s, h·w): the style's s x s blocks
        warped = patches.gather(2, nearest[:, None, :].expand(-1, patches.shape[1], -1))
        return F.pixel_shuffle(warped.view(-1, patches.shape[1], *content_feat.shape[-2:]), block)


class ColorTransfer(TransferMethod):
    """Reinhard colour transfer: match each Lab channel's mean and standard deviation to the style's."""

    name = family = "color-transfer"

    def __call__(self, content: Tensor, style: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return match_color(content, style)


class ColorMatched(TransferMethod):
    """A COAT result given the style's Lab statistics afterwards (``match_color``), as ``color_match=True`` does."""

    family = "coat + color match"

    def __init__(self, coat: COATTransfer) -> None:
        self.coat, self.n = coat, coat.n
        self.name = f"{coat.name} + color match"

    def __call__(self, content: Tensor, style: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return match_color(self.coat(content, style, generator), style)


def default_n_values(model: COATModel) -> list[int]:
    """The whole sweep, n = 0, 1, ..., K (n = K keeps the content's vectors everywhere)."""
    return list(range(model.num_modulation_layers + 1))


def build_methods(
    model: COATModel, n_values: list[int] | None = None, swap_n: int | None = None, warp_scale: int = 1,
    alignment: str | None = None, color_match: bool = False,
) -> list[TransferMethod]:
    """Every compared method: the COAT sweep (with the ``alignment`` rule, default the model's), latent-swap,
    warp, color-transfer, content and style; with ``color_match``, the sweep again with the style's colours matched
    afterwards."""
    n_values = default_n_values(model) if n_values is None else n_values
    k = model.num_modulation_layers
    bad = [n for n in n_values if not 0 <= n <= k]
    if bad or not n_values:
        raise ValueError(f"n_values must be a non-empty list of integers in [0, {k}], got {n_values}")
    sweep = [COATTransfer(model, n, alignment=alignment) for n in n_values]
    return [
        *sweep,
        COATTransfer(model, swap_n, use_alignment=False),
        FeatureWarp(model, warp_scale),
        ColorTransfer(),
        InputImage("content"),
        InputImage("style"),
        *(ColorMatched(coat) for coat in sweep if color_match),
    ]
