"""Latent alignment (COAT Sec. 3.2, Eq. 1-3): dense correspondence between content and style maps.

For one scale with content map F1 (C, N1 positions) and style map F2 (C, N2 positions):

* Eq. 1, cosine similarity: ``S_ij = <F1_i, F2_j> / (|F1_i| |F2_j|)``.
* Eq. 2, soft mutual consistency: ``Q_ij = S_ij^2 / (max_i' S_i'j · max_j' S_ij')``.
* Confident set ``p = {(i, j) : Q_ij = 1}``: the mutual nearest neighbours. Decided by argmax
  agreement (``argmax_j S_ij = j`` and ``argmax_i S_ij = i``), never by float equality of Q with 1.
* Eq. 3, aligned style map: ``F^_i = F2_j`` if ``(i, j)`` in p, else ``F1_i``.

``align_features`` never builds the (N1 x N2) matrix at once: it walks over blocks of content rows,
keeping the running row maxima and column maxima, so memory grows with N, not N^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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


@torch.no_grad()
def find_correspondence(content_feat: Tensor, style_feat: Tensor, block_size: int = 1024) -> Correspondence:
    """Mutual nearest neighbours of Eq. 1-2, computed over blocks of ``block_size`` content positions.

    content_feat: (B, C, H1, W1); style_feat: (B, C, H2, W2). Peak extra memory is about
    B·block_size·H2·W2 floats plus the normalised maps. The matches are discrete, so no graph is kept:
    gradients reach the features through the gather of Eq. 3 in ``align_features``.
    """
    if content_feat.ndim != 4 or style_feat.ndim != 4:
        raise ValueError("content_feat and style_feat must be (B, C, H, W) tensors")
    if content_feat.shape[:2] != style_feat.shape[:2]:
        raise ValueError(
            f"content_feat and style_feat need the same batch and channels, got {tuple(content_feat.shape)} "
            f"and {tuple(style_feat.shape)}"
        )
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    b = content_feat.shape[0]
    f1 = F.normalize(content_feat.flatten(2), dim=1, eps=1e-8).transpose(1, 2)  # (B, N1, C)
    f2 = F.normalize(style_feat.flatten(2), dim=1, eps=1e-8)  # (B, C, N2)
    n1, n2 = f1.shape[1], f2.shape[2]
    row_max = f1.new_empty(b, n1)
    row_arg = torch.empty(b, n1, dtype=torch.long, device=f1.device)
    col_max = f1.new_full((b, n2), float("-inf"))
    col_arg = torch.zeros(b, n2, dtype=torch.long, device=f1.device)
    for start in range(0, n1, block_size):
        s = f1[:, start : start + block_size] @ f2  # (B, blk, N2), a slice of Eq. 1
        row_max[:, start : start + s.shape[1]], row_arg[:, start : start + s.shape[1]] = s.max(dim=2)
        blk_max, blk_arg = s.max(dim=1)  # (B, N2)
        better = blk_max > col_max  # strict: on ties the earlier (smaller) index wins, as argmax does
        col_max = torch.where(better, blk_max, col_max)
        col_arg = torch.where(better, blk_arg + start, col_arg)
    mutual, confidence = _matches_from_maxima(row_max, row_arg, col_max, col_arg)
    return Correspondence(row_arg, row_max, confidence, mutual, tuple(content_feat.shape[2:]), tuple(style_feat.shape[2:]))


def align_features(
    content_feat: Tensor, style_feat: Tensor, block_size: int = 1024
) -> tuple[Tensor, Correspondence]:
    """Eq. 3: the aligned style map ``F^`` (style features moved to their mutual matches, content elsewhere).

    content_feat: (B, C, H1, W1); style_feat: (B, C, H2, W2) -> aligned (B, C, H1, W1) and the matches.
    """
    matches = find_correspondence(content_feat, style_feat, block_size)
    b, c = content_feat.shape[:2]
    f2 = style_feat.flatten(2)  # (B, C, N2)
    moved = f2.gather(2, matches.nearest[:, None, :].expand(b, c, -1))  # (B, C, N1)
    aligned = torch.where(matches.mutual[:, None, :], moved, content_feat.flatten(2))
    return aligned.view_as(content_feat), matches
