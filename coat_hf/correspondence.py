"""Latent alignment (COAT Sec. 3.2, Eq. 1-3): dense correspondence between content and style maps.

For one scale with content map F1 (C, N1 positions) and style map F2 (C, N2 positions):

* Eq. 1, cosine similarity: ``S_ij = <F1_i, F2_j> / (|F1_i| |F2_j|)``.
* Eq. 2, soft mutual consistency: ``Q_ij = S_ij^2 / (max_i' S_i'j · max_j' S_ij')``.
* Confident set ``p = {(i, j) : Q_ij = 1}``: the mutual nearest neighbours. Decided by argmax
  agreement (``argmax_j S_ij = j`` and ``argmax_i S_ij = i``), never by float equality of Q with 1.
* Eq. 3, aligned style map: ``F^_i = F2_j`` if ``(i, j)`` in p, else ``F1_i``. Two departures are
  selectable (``align_features(rule=...)``): ``"nearest"`` and ``"soft"`` (see there).

``align_features`` never builds the (N1 x N2) matrix at once: it walks over blocks of content rows,
keeping the running row maxima and column maxima, so memory grows with N, not N^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import fused_search
from .configuration_coat import ALIGNMENT_KERNELS, ALIGNMENT_RULES


def cosine_similarity(content_feat: Tensor, style_feat: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. 1 over all position pairs: (B, C, H1, W1), (B, C, H2, W2) -> S of shape (B, H1·W1, H2·W2)."""
    f1 = F.normalize(content_feat.flatten(2), dim=1, eps=eps)  # (B, C, N1)
    f2 = F.normalize(style_feat.flatten(2), dim=1, eps=eps)  # (B, C, N2)
    return f1.transpose(1, 2) @ f2


def mutual_consistency(similarity: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. 2 on a similarity matrix (..., N1, N2): ``Q_ij = S_ij^2 / (max_i S_ij · max_j S_ij)``.

    Among positive similarities, Q is 1 exactly at mutual nearest neighbours and below 1 elsewhere (a
    strongly negative S_ij can also reach Q >= 1, so the confident set is decided by argmax agreement).
    """
    col_max = similarity.amax(dim=-2, keepdim=True)  # max over content positions i, (..., 1, N2)
    row_max = similarity.amax(dim=-1, keepdim=True)  # max over style positions j, (..., N1, 1)
    return similarity.pow(2) / (row_max * col_max).clamp_min(eps)


@dataclass
class Correspondence:
    """Matches of one scale, per content position i (flattened row-major over (H1, W1)).

    ``nearest[b, i]`` is argmax_j S_ij (an index into the style's H2·W2 positions), ``similarity``
    the S value there, ``confidence`` the soft mutual consistency Q of that best match (Eq. 2, 1 at
    mutual matches), and ``mutual`` marks the confident set p of Eq. 3.
    """

    nearest: Tensor  # (B, N1) long
    similarity: Tensor  # (B, N1) float
    confidence: Tensor  # (B, N1) float
    mutual: Tensor  # (B, N1) bool
    content_size: tuple[int, int]  # (H1, W1)
    style_size: tuple[int, int]  # (H2, W2)

    def pairs(self, batch_index: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """The confident set p of one image: (content indices, style indices, similarity scores), each (M,)."""
        content_index = self.mutual[batch_index].nonzero().squeeze(1)
        return content_index, self.nearest[batch_index, content_index], self.similarity[batch_index, content_index]

    def confidence_map(self) -> Tensor:
        """Per-pixel confidence over the content grid, (B, H1, W1)."""
        return self.confidence.view(-1, *self.content_size)


def _matches_from_maxima(row_max: Tensor, row_arg: Tensor, col_max: Tensor, col_arg: Tensor) -> tuple[Tensor, Tensor]:
    """Mutual-NN mask and Q of each row's best match, from row/column maxima and argmaxima."""
    n1 = row_arg.shape[1]
    mutual = col_arg.gather(1, row_arg) == torch.arange(n1, device=row_arg.device)
    # Q at (i, j*=argmax_j S_ij) = S_ij*^2 / (S_ij* · max_i' S_i'j*) = S_ij* / max_i' S_i'j*.
    confidence = row_max.pow(2) / (row_max * col_max.gather(1, row_arg)).clamp_min(1e-8)
    return mutual, confidence


def _check_pair(content: Tensor, style: Tensor, names: str) -> None:
    if content.ndim != 4 or style.ndim != 4:
        raise ValueError(f"{names} must be (B, C, H, W) tensors")
    if content.shape[:2] != style.shape[:2]:
        raise ValueError(
            f"{names} need the same batch and channels, got {tuple(content.shape)} and {tuple(style.shape)}")


def _check_maps(content_feat: Tensor, style_feat: Tensor, block_size: int, kernel: str) -> None:
    _check_pair(content_feat, style_feat, "content_feat and style_feat")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if kernel not in ALIGNMENT_KERNELS:
        raise ValueError(f"kernel must be one of {ALIGNMENT_KERNELS}, got {kernel!r}")


def _column_max(s: Tensor) -> tuple[Tensor, Tensor]:
    """``s.max(dim=1)`` of a (B, blk, N2) block, values and first arg-max. On CPUs, in a form several times faster
    there (a reduction with indices across rows is slow on them, one without indices fast); other devices take
    ``s.max`` itself (one kernel; on an H100 the CPU form took about 30 of the 138 ms of GPU time of an eager
    training step, ``benchmarks/results/profile_training_NVIDIA-H100-80GB-HBM3_b64_eager.txt``)."""
    if s.device.type != "cpu":
        return s.max(dim=1)
    values = s.amax(dim=1)  # (B, N2)
    blk = s.shape[1]
    countdown = torch.arange(blk, 0, -1, dtype=torch.int16 if blk < 2**15 else torch.int32, device=s.device)
    first = blk - ((s == values[:, None, :]) * countdown[None, :, None]).amax(dim=1).long()
    return values, first.clamp_max(blk - 1)  # a NaN column matches nowhere: kept in range


def _row_max(s: Tensor, style_width: int) -> tuple[Tensor, Tensor]:
    """``s.max(dim=2)`` of a (B, blk, N2) block whose N2 = H2·W2 style positions run row-major, values and first
    arg-max, in two levels: the maximum of each style row (a reduction without indices, fast on CPUs), the best
    style row, then the arg-max inside that row alone. The same result; on one CPU thread, 64x64 style maps,
    about a third of the time of the one-level reduction with indices (5 ms instead of 15 ms per 4096 rows). Other
    devices take ``s.max`` itself (see ``_column_max``)."""
    if s.device.type != "cpu":
        return s.max(dim=2)
    b, blk, n2 = s.shape
    rows = s.view(b, blk, n2 // style_width, style_width)  # (B, blk, H2, W2)
    values, best_row = rows.amax(dim=3).max(dim=2)  # (B, blk): the first style row holding the maximum
    inside = rows.gather(2, best_row[:, :, None, None].expand(b, blk, 1, style_width)).squeeze(2).argmax(dim=2)
    return values, best_row * style_width + inside


_CPU_BLOCK_ELEMENTS, _CPU_MIN_BLOCK_ROWS = 2**20, 256
"""On the CPU, blocks of S hold about 2^20 values (4 MB: as many content rows as fit, at least 256, at most
``block_size``), small enough to stay in cache between the product and its reductions:
``benchmarks/benchmark_inference.py --interleaved 128`` puts a COAT call at 1.11-1.19x the latent-swap call in four
runs (256-row blocks of its 64x64 finest map, the 32x32 map whole), 1.30-1.34x with 1024-row blocks. Thinner
blocks lose on large maps (256x256 style maps, nearest matches: 10.6 s with 256 rows, 12.5-15.1 s with 16)."""


class _SimilarityBlocks:
    """Blocks of content rows of S (Eq. 1), ``rows`` at a time. Without a graph on the CPU, the blocks are capped at
    ``_CPU_BLOCK_ELEMENTS`` and all written into one reused buffer (there a fresh multi-megabyte tensor per block
    costs as much as its matrix product: page faults); other devices keep ``block_size``, their caching allocator
    and autocast."""

    def __init__(self, f1: Tensor, f2: Tensor, block_size: int, keep_graph: bool = False):
        self.f1, self.f2 = f1, f2  # (B, N1, C), (B, C, N2) unit-length
        self.keep_graph = keep_graph
        b, n1, n2 = f1.shape[0], f1.shape[1], f2.shape[2]
        reuse = f1.device.type == "cpu" and f1.dtype == f2.dtype and not keep_graph
        fitting = max(_CPU_MIN_BLOCK_ROWS, _CPU_BLOCK_ELEMENTS // (b * n2))
        self.rows = min(block_size, n1, fitting) if reuse else block_size
        self.buffer = f1.new_empty(b * self.rows * n2) if reuse else None

    def starts(self) -> range:
        """The first content row of each block."""
        return range(0, self.f1.shape[1], self.rows)

    def similarity(self, start: int) -> Tensor:
        """S for content rows ``start .. start + rows``, (B, blk, N2), with a graph only when ``keep_graph``;
        valid until the next call."""
        rows = self.f1[:, start : start + self.rows]  # (B, blk, C)
        if self.keep_graph:
            return rows @ self.f2
        with torch.no_grad():
            if self.buffer is None:
                return rows @ self.f2
            b, blk, n2 = rows.shape[0], rows.shape[1], self.f2.shape[2]
            return torch.bmm(rows, self.f2, out=self.buffer[: b * blk * n2].view(b, blk, n2))


def _unit_channels(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """``F.normalize(maps.flatten(2), dim=1, eps=eps)``, (B, C, N), in a form some 10x faster on CPUs for maps
    laid out (B, C, H, W) (there a strided norm reduction is slow; a sum of squares is not)."""
    flat = maps.flatten(2)
    return flat * torch.rsqrt(flat.square().sum(dim=1, keepdim=True).clamp_min(eps * eps))


def _unit_maps(content_key: Tensor, style_key: Tensor) -> tuple[Tensor, Tensor]:
    """Unit-length maps for Eq. 1's blocks: content (B, N1, C) and style (B, C, N2)."""
    return _unit_channels(content_key).transpose(1, 2), _unit_channels(style_key)


def _fused(kernel: str, f1: Tensor) -> bool:
    return kernel == "fused" and fused_search.available(f1)


def _search(content_key: Tensor, style_key: Tensor, block_size: int, temperature: float | None,
            style_values: Tensor | None = None, kernel: str = "blocked") -> tuple[Correspondence, Tensor | None]:
    """The matches of Eq. 1-2 between the maps ``content_key`` and ``style_key`` and, when ``temperature`` is
    given, the softmax-weighted ``style_values`` (default ``style_key``) of every content row, (B, C, N1): one
    blocked pass over S, or without ``temperature`` and with ``kernel="fused"`` on a CUDA device one Triton kernel
    (:mod:`coat_hf.fused_search`)."""
    f1, f2 = _unit_maps(content_key, style_key)
    if temperature is None and _fused(kernel, f1):
        row_max, row_arg, col_max, col_arg = fused_search.search_maxima(f1, f2)
        soft = None
    else:
        row_max, row_arg, col_max, col_arg, soft = _blocked_pass(f1, f2, block_size, temperature, style_key,
                                                                  style_values)
    mutual, confidence = _matches_from_maxima(row_max, row_arg, col_max, col_arg)
    matches = Correspondence(row_arg, row_max.detach(), confidence.detach(), mutual,
                             tuple(content_key.shape[2:]), tuple(style_key.shape[2:]))
    return matches, soft


def _blocked_pass(f1: Tensor, f2: Tensor, block_size: int, temperature: float | None, style_key: Tensor,
                   style_values: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The blocked pass of ``_search`` over unit maps f1 (B, N1, C) and f2 (B, C, N2): row and column
    maxima with their first arg-maxima and, with ``temperature``, the soft-aligned values (B, C, N1)."""
    b, n1, n2 = f1.shape[0], f1.shape[1], f2.shape[2]
    row_max = f1.new_empty(b, n1)
    row_arg = torch.empty(b, n1, dtype=torch.long, device=f1.device)
    col_max = f1.new_full((b, n2), float("-inf"))
    col_arg = torch.zeros(b, n2, dtype=torch.long, device=f1.device)
    soft = None
    if temperature is not None:
        style_values = style_key if style_values is None else style_values
        values = style_values.flatten(2).transpose(1, 2)  # (B, N2, C), gradients flow into the style
        soft = []
    blocks = _SimilarityBlocks(f1, f2, block_size, keep_graph=soft is not None and torch.is_grad_enabled())
    for start in blocks.starts():
        s = blocks.similarity(start)  # (B, blk, N2), a slice of Eq. 1
        stop = start + s.shape[1]
        with torch.no_grad():
            row_max[:, start:stop], row_arg[:, start:stop] = _row_max(s, style_key.shape[3])
            blk_max, blk_arg = _column_max(s)  # (B, N2)
            better = blk_max > col_max  # strict: on ties the earlier (smaller) index wins, as argmax does
            col_max = torch.where(better, blk_max, col_max)
            col_arg = torch.where(better, blk_arg + start, col_arg)
        if soft is not None:
            soft.append(torch.softmax(s / temperature, dim=2) @ values)  # (B, blk, C)
    return row_max, row_arg, col_max, col_arg, None if soft is None else torch.cat(soft, dim=1).transpose(1, 2)


@torch.no_grad()
def _nearest_style(content_key: Tensor, style_key: Tensor, block_size: int, kernel: str = "blocked") -> Tensor:
    """``argmax_j S_ij`` of Eq. 1 for every content position i, (B, N1): the row maxima alone, without the
    column maxima that Eq. 2 and the confident set need (the ``"nearest"`` rule when no matches are asked for)."""
    f1, f2 = _unit_maps(content_key, style_key)
    if _fused(kernel, f1):
        return fused_search.search_maxima(f1, f2, columns=False)[1]
    blocks = _SimilarityBlocks(f1, f2, block_size)
    return torch.cat([_row_max(blocks.similarity(start), style_key.shape[3])[1] for start in blocks.starts()], dim=1)


@torch.no_grad()
def find_correspondence(content_feat: Tensor, style_feat: Tensor, block_size: int = 1024, kernel: str = "blocked"
                        ) -> Correspondence:
    """Mutual nearest neighbours of Eq. 1-2, computed over blocks of ``block_size`` content positions (or, with
    ``kernel="fused"`` on CUDA devices, in one kernel that never writes S).

    content_feat: (B, C, H1, W1); style_feat: (B, C, H2, W2). Peak extra memory is about
    B·block_size·H2·W2 floats plus the normalised maps. The matches are discrete, so no graph is kept:
    gradients reach the features through the gather of Eq. 3 in ``align_features``.
    """
    _check_maps(content_feat, style_feat, block_size, kernel)
    return _search(content_feat, style_feat, block_size, None, kernel=kernel)[0]


def align_features(
    content_feat: Tensor, style_feat: Tensor, block_size: int = 1024, rule: str = "mutual",
    temperature: float = 0.05, return_matches: bool = True, content_key: Tensor | None = None,
    style_key: Tensor | None = None, kernel: str = "blocked",
) -> tuple[Tensor, Correspondence | None]:
    """The aligned style map ``F^`` under one of three rules, and the matches of Eq. 1-2.

    * ``"mutual"`` (Eq. 3, the paper): ``F^_i = F2_j`` on a mutual match ``(i, j)``, ``F1_i`` elsewhere.
    * ``"nearest"`` (departure): every content position takes its nearest style feature,
      ``F^_i = F2_{argmax_j S_ij}``, so the style reaches every position.
    * ``"soft"`` (departure): ``F^_i = c_i · Σ_j softmax_j(S_ij / temperature) F2_j + (1 − c_i) · F1_i``
      with ``c_i`` the Eq. 2 confidence of i's best match (1 at mutual matches): differentiable through
      S, and content features remain where no style position answers i.

    ``content_key`` and ``style_key`` (B, C', H1, W1) and (B, C', H2, W2), when given, are the maps Eq. 1-2
    compare in place of the features (``COATConfig.match_features = "vgg16"``); the features are what moves.

    content_feat: (B, C, H1, W1); style_feat: (B, C, H2, W2) -> aligned (B, C, H1, W1) and the matches
    (``None`` when ``return_matches`` is False and the rule does not need them: ``"nearest"`` then skips the
    column maxima of Eq. 2; ``benchmarks/benchmark_inference.py --interleaved 128``: a 143 ms call instead of
    172 ms on one CPU thread in one run, 1.11-1.19x the latent-swap call over four). Memory stays within the
    blocked bound of ``find_correspondence`` for every rule. ``kernel`` (``COATConfig.alignment_kernel``):
    ``"fused"`` finds the maxima of the mutual and nearest rules in one Triton kernel on CUDA devices.
    """
    _check_maps(content_feat, style_feat, block_size, kernel)
    if rule not in ALIGNMENT_RULES:
        raise ValueError(f"alignment must be one of {ALIGNMENT_RULES}, got {rule!r}")
    if rule == "soft" and not temperature > 0:
        raise ValueError(f"alignment_temperature must be > 0, got {temperature}")
    content_key = content_feat if content_key is None else content_key
    style_key = style_feat if style_key is None else style_key
    _check_pair(content_key, style_key, "content_key and style_key")
    if content_key.shape[2:] != content_feat.shape[2:] or style_key.shape[2:] != style_feat.shape[2:]:
        raise ValueError(f"the keys' maps {tuple(content_key.shape[2:])}, {tuple(style_key.shape[2:])} must have the "
                         f"features' sizes {tuple(content_feat.shape[2:])}, {tuple(style_feat.shape[2:])}")
    b, c = content_feat.shape[:2]
    if rule == "nearest" and not return_matches:
        nearest = _nearest_style(content_key, style_key, block_size, kernel)  # (B, N1)
        return style_feat.flatten(2).gather(2, nearest[:, None, :].expand(b, c, -1)).view_as(content_feat), None
    matches, soft = _search(content_key, style_key, block_size, temperature if rule == "soft" else None, style_feat,
                            kernel)
    content_flat = content_feat.flatten(2)  # (B, C, N1)
    if rule == "soft":
        weight = matches.confidence.clamp(0, 1)[:, None, :].to(soft.dtype)  # (B, 1, N1)
        aligned = weight * soft + (1 - weight) * content_flat
    else:
        moved = style_feat.flatten(2).gather(2, matches.nearest[:, None, :].expand(b, c, -1))  # (B, C, N1)
        aligned = moved if rule == "nearest" else torch.where(matches.mutual[:, None, :], moved, content_flat)
    return aligned.view_as(content_feat), matches
