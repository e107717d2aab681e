"""Pictures of COAT's correspondences (Sec. 3.2): match lines between content and style, confidence heatmaps.

The functions read *matches*: one dict per feature scale l (shallow to deep), as the
``coat-appearance-transfer`` pipeline returns in ``output["correspondence"]["matches"]``:

* ``scale``: l; ``content_size`` (H1, W1) and ``style_size`` (H2, W2): the two feature grids;
* ``content_index``, ``style_index``: (M,) long, flat row-major grid positions of the M mutual matches
  (the confident set p of Eq. 3); ``score``: (M,) their cosine similarity S (Eq. 1);
* ``confidence``: (H1, W1), the soft mutual consistency Q (Eq. 2) of each content position's best match.

A grid cell maps to the same fraction of the picture whatever its size, since the model sees each image
resized as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from PIL import ImageDraw, ImageFont
from torch import Tensor

from .correspondence import Correspondence

Matches = Sequence[Mapping]

MAX_DRAWN_GRID = 32 * 32
""":func:`default_scale` picks the finest scale whose content grid has at most this many positions."""


def correspondence_to_matches(correspondences: Sequence[Correspondence], batch_index: int = 0) -> list[dict]:
    """The matches of one image of a batch, per scale, from ``COATModel(..., output_correspondence=True)``."""
    matches = []
    for scale, corr in enumerate(correspondences):
        content_index, style_index, score = corr.pairs(batch_index)
        matches.append({
            "scale": scale,
            "content_size": tuple(corr.content_size),
            "style_size": tuple(corr.style_size),
            "content_index": content_index,  # (M,)
            "style_index": style_index,  # (M,)
            "score": score.float(),  # (M,)
            "confidence": corr.confidence_map()[batch_index].float(),  # (H1, W1)
        })
    return matches


def default_scale(matches: Matches) -> int:
    """The finest scale with at most :data:`MAX_DRAWN_GRID` content positions (the deepest if none)."""
    for m in matches:
        h, w = m["content_size"]
        if h * w <= MAX_DRAWN_GRID:
            return m["scale"]
    return matches[-1]["scale"]


def _scale(matches: Matches, scale: int | None) -> Mapping:
    scale = default_scale(matches) if scale is None else scale
    if not 0 <= scale < len(matches):
        raise ValueError(f"scale must be in [0, {len(matches)}), got {scale}")
    return matches[scale]


def _rgba(values: Tensor, colormap: str) -> np.ndarray:
    """Values in [0, 1], any shape -> uint8 RGBA of a matplotlib colormap, shape (..., 4)."""
    import matplotlib  # imported on first drawing: `import coat_hf` stays light

    return matplotlib.colormaps[colormap](values.clamp(0, 1).numpy(), bytes=True)


def _colours(values: Tensor, colormap: str) -> list[tuple[int, int, int]]:
    """Values in [0, 1] -> RGB colours of a matplotlib colormap."""
    rgba = _rgba(values, colormap)  # (M, 4) uint8
    return [tuple(int(c) for c in colour[:3]) for colour in rgba]


def _cell_centres(index: Tensor, grid: tuple[int, int], size: tuple[int, int],
                  offset: int = 0) -> list[tuple[float, float]]:
    """Flat grid positions -> pixel centres in a picture of ``size`` (W, H) pasted ``offset`` px to the right."""
    rows, cols = index // grid[1], index % grid[1]
    xs = (cols.float() + 0.5) / grid[1] * size[0] + offset
    ys = (rows.float() + 0.5) / grid[0] * size[1]
    return list(zip(xs.tolist(), ys.tolist()))


def confidence_map(matches: Matches, size: tuple[int, int], scale: int | None = None) -> Tensor:
    """Per-pixel confidence Q (Eq. 2) of one scale, bilinearly resized to ``size`` (W, H): (H, W) in [0, 1]."""
    q = _scale(matches, scale)["confidence"].float()[None, None]  # (1, 1, H1, W1)
    return F.interpolate(q, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def confidence_heatmap(
    matches: Matches,
    size: tuple[int, int],
    scale: int | None = None,
    image: PIL.Image.Image | None = None,
    alpha: float = 0.5,
    colormap: str = "viridis",
) -> PIL.Image.Image:
    """A colour picture of :func:`confidence_map` at ``size`` (W, H), optionally blended over ``image``.

    Args:
        matches: per-scale matches (see the module docstring).
        size: (width, height) of the picture.
        scale: which scale (default :func:`default_scale`).
        image: drawn underneath (resized to ``size``) with weight ``1 - alpha``.
        alpha: the heatmap's weight when ``image`` is given.
        colormap: a matplotlib colormap name; low confidence at its start.
    """
    q = confidence_map(matches, size, scale)  # (H, W)
    rgba = _rgba(q, colormap)  # (H, W, 4) uint8
    heatmap = PIL.Image.fromarray(rgba[..., :3])
    if image is None:
        return heatmap
    return PIL.Image.blend(image.convert("RGB").resize(size, PIL.Image.Resampling.BICUBIC), heatmap, alpha)


def draw_matches(
    content: PIL.Image.Image,
    style: PIL.Image.Image,
    matches: Matches,
    scale: int | None = None,
    max_lines: int = 64,
    height: int = 256,
    colormap: str = "viridis",
) -> PIL.Image.Image:
    """Content and style side by side with lines between an even subsample of one scale's mutual matches.

    Lines are coloured by the match's cosine similarity (``colormap`` over [0, 1]); a caption gives the
    number of matches. Each picture keeps its aspect ratio at ``height`` px.

    Args:
        content, style: the two input images (any size).
        matches: per-scale matches (see the module docstring).
        scale: which scale (default :func:`default_scale`).
        max_lines: at most this many lines, evenly spread over the matches in content raster order.
        height: height of the two pictures in pixels.
        colormap: a matplotlib colormap name.
    """
    m = _scale(matches, scale)
    sizes = [(max(1, round(height * im.width / im.height)), height) for im in (content, style)]
    gap, caption = max(4, height // 32), max(16, height // 12)
    canvas = PIL.Image.new("RGB", (sizes[0][0] + gap + sizes[1][0], height + caption), "white")
    canvas.paste(content.convert("RGB").resize(sizes[0], PIL.Image.Resampling.BICUBIC), (0, 0))
    canvas.paste(style.convert("RGB").resize(sizes[1], PIL.Image.Resampling.BICUBIC), (sizes[0][0] + gap, 0))

    total = m["content_index"].numel()
    keep = torch.linspace(0, max(total - 1, 0), min(max_lines, total)).round().long().unique()  # (k,)
    starts = _cell_centres(m["content_index"][keep], m["content_size"], sizes[0])
    ends = _cell_centres(m["style_index"][keep], m["style_size"], sizes[1], offset=sizes[0][0] + gap)
    draw = ImageDraw.Draw(canvas)
    width, radius = max(1, height // 160), max(2, height // 96)
    for start, end, colour in zip(starts, ends, _colours(m["score"][keep].float(), colormap)):
        draw.line([start, end], fill="black", width=width + 2)  # dark outline: visible on any background
        draw.line([start, end], fill=colour, width=width)
        for x, y in (start, end):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline="black")
    h1, w1 = m["content_size"]
    text = f"{total} matches, scale {m['scale']} ({h1}x{w1}), {len(keep)} drawn"
    draw.text((4, height + caption // 2), text, fill="black", anchor="lm",
              font=ImageFont.load_default(size=max(10, caption * 2 // 3)))
    return canvas
