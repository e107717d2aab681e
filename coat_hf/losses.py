"""COAT training losses: L = L_rec + α·L_reg + β·L_CCL.

* `reconstruction_loss`: L_rec = λ_mse·MSE + λ_lpips·LPIPS, optionally weighted by a foreground mask.
* `latent_regularization`: L_reg, pSp's W-norm or e4e's delta regularisation of the style codes.
* `correspondence_contrastive_loss`: L_CCL, the InfoNCE loss of Eq. 5-6 over matched positions.
* `color_statistics_loss`: L_color, a departure: Lab means and deviations of an output pulled to a reference's.
* `matched_color_loss`: L_local, a departure: an output's local Lab colours pulled to a reference's at matched positions.
* `structure_loss`: L_struct, a departure: STROTSS's self-similarity distance between an output's and a reference's
  features (`self_similarity`, `self_similarity_distance`, which the evaluation's structure distance uses too).
* `color_distribution_loss`: L_hist, a departure: the sliced Wasserstein distance between an output's and a
  reference's Lab pixels.
* `texture_loss`: L_tex, a departure: the sliced Wasserstein distance between an output's and a reference's feature
  distributions.

LPIPS models with real ImageNet backbones come from `coat_hf.lpips_weights.load_lpips`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lpips
import torch
import torch.nn.functional as F
from torch import Tensor

from .color import lab_statistics, rgb_to_lab
from .correspondence import cosine_similarity
from .lpips_weights import load_lpips


__all__ = [
    "HARD_NEGATIVE_RULES",
    "LATENT_REGULARIZATIONS",
    "color_distribution_loss",
    "color_statistics_loss",
    "correspondence_contrastive_loss",
    "latent_regularization",
    "load_lpips",
    "lpips_loss",
    "matched_color_loss",
    "mse_loss",
    "reconstruction_loss",
    "self_similarity",
    "self_similarity_distance",
    "structure_loss",
    "texture_loss",
]

HARD_NEGATIVE_RULES = ("hardest", "exclude_nearest", "all")
LATENT_REGULARIZATIONS = ("w_norm", "delta")


def _check_images(output: Tensor, target: Tensor, mask: Tensor | None, target_name: str = "target") -> None:
    if output.ndim != 4 or output.shape[1] != 3:
        raise ValueError(f"`output` must be (B, 3, H, W) images, got shape {tuple(output.shape)}")
    if target.shape != output.shape:
        raise ValueError(f"`{target_name}` shape {tuple(target.shape)} differs from `output` shape {tuple(output.shape)}")
    if mask is not None and (mask.ndim != 4 or mask.shape[:2] != (output.shape[0], 1)):
        raise ValueError(f"`mask` must be (B, 1, H, W) with B={output.shape[0]}, got shape {tuple(mask.shape)}")


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (B, C, H, W) `values`, each image's pixels weighted by its (B, 1, H', W') mask."""
    if mask is None:
        return values.mean()
    if mask.shape[-2:] != values.shape[-2:]:
        mask = F.interpolate(mask.to(values.dtype), size=values.shape[-2:], mode="bilinear", align_corners=False)
    mask = mask.to(values.dtype)
    weighted = (values * mask).sum(dim=(1, 2, 3))  # (B,)
    weight = mask.sum(dim=(1, 2, 3)) * values.shape[1]  # (B,)
    return (weighted / weight.clamp_min(torch.finfo(values.dtype).eps)).mean()


def mse_loss(output: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of (B, 3, H, W) images, per-pixel weighted by `mask` (B, 1, H, W) in [0, 1].

    With a mask, each image's error is normalised by its mask sum, then averaged over the batch
    (an all-ones mask gives the plain MSE; an empty mask contributes 0).
    """
    _check_images(output, target, mask)
    return _masked_mean((output - target).square(), mask)


def color_statistics_loss(output: Tensor, reference: Tensor, weight: Tensor | None = None) -> Tensor:
    """L_color (a departure from the paper): how far the per-channel Lab mean and standard deviation of ``output``
    lie from ``reference``'s, the statistics that Reinhard's global colour transfer matches (``coat_hf.color``).
    Per image ``mean_c ((μ_c − μ'_c)² + (σ_c − σ'_c)²)`` on Lab / 100, then the batch mean of ``weight`` times it.

    output, reference: (B, 3, H, W) in [-1, 1] (computed in float32); weight: optional (B,) per-image weights.
    """
    _check_images(output, reference, None, "reference")
    (_, mean, std), (_, reference_mean, reference_std) = lab_statistics(output), lab_statistics(reference)
    per_image = (((mean - reference_mean) / 100).square() + ((std - reference_std) / 100).square()).mean(dim=(1, 2, 3))
    return (per_image if weight is None else per_image * weight).mean()


def matched_color_loss(output: Tensor, reference: Tensor, nearest: Tensor, valid: Tensor,
                       weight: Tensor | None = None) -> Tensor:
    """L_local (a departure from the paper): Eq. 3 read in colour. Where the aligned map takes the style's F2_j at
    position i, the output's mean Lab colour in cell i is pulled to the reference's in cell j; cells form the h x w
    grid of the matched scale. Per image the mean over valid cells of ``mean_c ((L_c(i) − L'_c(j)) / 100)²``, then
    the batch mean of ``weight`` times it (an image with no valid cell contributes 0).

    output, reference: (B, 3, H, W) in [-1, 1] (computed in float32); nearest: (B, h, w) int64, each cell's matched
    reference cell (an index into h·w); valid: (B, h, w) bool, the cells that count (the mutual matches);
    weight: optional (B,) per-image weights.
    """
    _check_images(output, reference, None, "reference")
    if nearest.shape != valid.shape or nearest.ndim != 3 or nearest.shape[0] != output.shape[0]:
        raise ValueError(f"nearest and valid must both be (B, h, w) with B = {output.shape[0]}, "
                         f"got {tuple(nearest.shape)} and {tuple(valid.shape)}")
    grid = tuple(nearest.shape[1:])

    def cells(image: Tensor) -> Tensor:  # (B, 3, h·w) mean Lab colour per cell
        return F.adaptive_avg_pool2d(rgb_to_lab((image.float() + 1) / 2), grid).flatten(2)

    matched = cells(reference).gather(2, nearest.flatten(1)[:, None].expand(-1, 3, -1))  # (B, 3, h·w)
    error = ((cells(output) - matched) / 100).square().mean(dim=1)  # (B, h·w)
    valid = valid.flatten(1).to(error.dtype)
    per_image = (error * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)
    return (per_image if weight is None else per_image * weight).mean()


def self_similarity(features: Tensor, eps: float = 1e-8) -> Tensor:
    """STROTSS's normalised self-dissimilarity of (B, C, H, W) features: (B, N, N), columns sum to 1."""
    dissimilarity = 1.0 - cosine_similarity(features, features)  # (B, N, N)
    return dissimilarity / dissimilarity.sum(dim=1, keepdim=True).clamp_min(eps)


def self_similarity_distance(similarity_x: Tensor, similarity_y: Tensor) -> Tensor:
    """``(1/N) Σ_j Σ_i |D̃^X_ij − D̃^Y_ij|`` of two (B, N, N) ``self_similarity`` matrices: (B,), in [0, 2]."""
    return (similarity_x - similarity_y).abs().sum(dim=1).mean(dim=1)


def lpips_hypercolumns(lpips_model: lpips.LPIPS, images: Tensor, grid_size: int) -> Tensor:
    """The LPIPS backbone's activations at each of its layers, unit-normalised per position (as LPIPS compares
    them), resized to ``grid_size`` and concatenated: (B, 3, S, S) in [-1, 1] -> (B, C, g, g)."""
    grid = (grid_size, grid_size)
    layers = lpips_model.net(lpips_model.scaling_layer(images))
    return torch.cat([F.interpolate(lpips.normalize_tensor(h), size=grid, mode="bilinear", align_corners=False,
                                    antialias=True) for h in layers], dim=1)


def structure_loss(lpips_model: lpips.LPIPS, output: Tensor, reference: Tensor, grid_size: int = 16) -> Tensor:
    """L_struct (a departure from the paper): STROTSS's self-similarity distance (Kolkin et al., 2019, Eq. 4) between
    ``output``'s and ``reference``'s hypercolumns of the frozen LPIPS backbone on a ``grid_size`` grid, batch mean.
    It compares each image's layout with itself, so the output may take any colours that keep the reference's
    layout. (The evaluation's structure distance is the same formula on VGG16 hypercolumns, a different network.)

    output, reference: (B, 3, S, S) in [-1, 1] (computed in float32); no gradient flows into ``reference``.
    """
    _check_images(output, reference, None, "reference")
    with torch.no_grad():
        reference_similarity = self_similarity(lpips_hypercolumns(lpips_model, reference.float(), grid_size))
    similarity = self_similarity(lpips_hypercolumns(lpips_model, output.float(), grid_size))  # (B, N, N)
    return self_similarity_distance(similarity, reference_similarity).mean()


def texture_loss(lpips_model: lpips.LPIPS, output: Tensor, reference: Tensor, directions: Tensor,
                 weight: Tensor | None = None, grid_size: int = 32) -> Tensor:
    """L_tex (a departure from the paper): the squared sliced Wasserstein distance (Heitz et al., 2021) between the
    distributions of ``output``'s and ``reference``'s hypercolumns of the frozen LPIPS backbone: each image's g·g
    positions projected on its own random unit directions and sorted, ``SW_2^2 = mean_{θ,k} (sort(θ·X)_k −
    sort(θ·Y)_k)^2``. It compares where features lie, not where they are: the reference's textures and colours, any
    layout. Then the batch mean of ``weight`` times it. (The evaluation's SWD VGG is the same distance on VGG16
    hypercolumns, a different network, along fixed directions.)

    output, reference: (B, 3, S, S) in [-1, 1] (computed in float32); directions: (B, C, P), any scale (each
    column is normalised), C the backbone's channels (1152 for AlexNet); weight: optional (B,); no gradient flows
    into ``reference``.
    """
    _check_images(output, reference, None, "reference")
    expected = (output.shape[0], sum(lpips_model.chns))
    if directions.ndim != 3 or tuple(directions.shape[:2]) != expected:
        raise ValueError(f"directions must be (B, C, P) with (B, C) = {expected}, got {tuple(directions.shape)}")
    with torch.no_grad():
        reference_columns = lpips_hypercolumns(lpips_model, reference.float(), grid_size).flatten(2)  # (B, C, N)
    per_image = _sliced_wasserstein(lpips_hypercolumns(lpips_model, output.float(), grid_size).flatten(2),
                                    reference_columns, directions)
    return (per_image if weight is None else per_image * weight).mean()


def color_distribution_loss(output: Tensor, reference: Tensor, directions: Tensor,
                            weight: Tensor | None = None) -> Tensor:
    """L_hist (a departure from the paper): the squared sliced Wasserstein distance between the distributions of
    ``output``'s and ``reference``'s Lab pixels (Lab / 100), each image along its own random directions: the
    reference's whole colour histogram, where L_color matches only its means and deviations. Then the batch mean
    of ``weight`` times it. (The evaluation's SWD Lab is the same distance along fixed directions, not squared.)

    output, reference: (B, 3, H, W) in [-1, 1] (computed in float32); directions: (B, 3, P), any scale (each
    column is normalised); weight: optional (B,); no gradient flows into ``reference``.
    """
    _check_images(output, reference, None, "reference")
    if directions.ndim != 3 or tuple(directions.shape[:2]) != (output.shape[0], 3):
        raise ValueError(f"directions must be (B, 3, P) with B = {output.shape[0]}, got {tuple(directions.shape)}")

    def pixels(image: Tensor) -> Tensor:  # (B, 3, H·W)
        return rgb_to_lab((image.float() + 1) / 2).flatten(2) / 100

    per_image = _sliced_wasserstein(pixels(output), pixels(reference).detach(), directions)
    return (per_image if weight is None else per_image * weight).mean()


def _sliced_wasserstein(x: Tensor, y: Tensor, directions: Tensor) -> Tensor:
    """``SW_2^2 = mean_{θ,k} (sort(θ·x)_k − sort(θ·y)_k)^2`` per image of point sets x and y (B, C, N) along
    directions (B, C, P), each column normalised: (B,)."""
    directions = F.normalize(directions.float(), dim=1).transpose(1, 2)  # (B, P, C)
    return ((directions @ x).sort(dim=2).values - (directions @ y).sort(dim=2).values).square().mean(dim=(1, 2))


@contextmanager
def _spatial_output(model: lpips.LPIPS) -> Iterator[lpips.LPIPS]:
    """Make `model` return its (B, 1, H, W) distance map (lpips' `spatial=True`) for a while."""
    spatial = model.spatial
    model.spatial = True
    try:
        yield model
    finally:
        model.spatial = spatial


def lpips_loss(lpips_model: lpips.LPIPS, output: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Batch-mean LPIPS of (B, 3, H, W) images in [-1, 1].

    With a (B, 1, H, W) `mask`, lpips' spatial map (upsampled to H×W) is averaged over each image's
    mask (resized to the images when needed) and normalised by the mask sum. Because lpips
    upsamples each layer's map bilinearly, an all-ones mask matches the unmasked value only
    approximately (to about 1e-4 relative).
    """
    _check_images(output, target, mask)
    if mask is None:
        return lpips_model(output, target).mean()
    with _spatial_output(lpips_model):
        distance = lpips_model(output, target)  # (B, 1, H, W)
    return _masked_mean(distance, mask)


def reconstruction_loss(
    output: Tensor,
    target: Tensor,
    lpips_model: lpips.LPIPS | None = None,
    lambda_mse: float = 1.0,
    lambda_lpips: float = 0.8,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L_rec = λ_mse·MSE(output, target) + λ_lpips·LPIPS(output, target).

    Args:
        output, target: (B, 3, H, W) images in [-1, 1].
        lpips_model: from `load_lpips`; required when `lambda_lpips > 0`. Without it (and
            `lambda_lpips=0`) the LPIPS term is left out.
        mask: optional (B, 1, H, W) foreground weight in [0, 1] (e.g. horse masks), applied to
            both terms, see `mse_loss` and `lpips_loss`.

    Returns:
        The scalar L_rec and its unweighted parts `{"mse": ..., "lpips": ...}` (for logging).
    """
    if lpips_model is None and lambda_lpips > 0:
        raise ValueError("`lpips_model` is required when `lambda_lpips` > 0 (pass lambda_lpips=0 to train without it)")
    parts = {"mse": mse_loss(output, target, mask)}
    total = lambda_mse * parts["mse"]
    if lpips_model is not None:
        parts["lpips"] = lpips_loss(lpips_model, output, target, mask)
        total = total + lambda_lpips * parts["lpips"]
    return total, parts


def latent_regularization(latents: Tensor, latent_avg: Tensor | None = None, kind: str = "w_norm") -> Tensor:
    """L_reg on the K per-layer style codes `latents` (B, K, D).

    * ``"w_norm"`` (pSp): ``sum_b ||w_b - w_avg||_2 / B``, the Frobenius norm over all K×D entries of
      each sample, i.e. pSp's ``torch.sum((w - w_avg).norm(2, dim=(1, 2))) / B``. `latent_avg` is
      the generator's average code, (D,) or (K, D).
    * ``"delta"`` (e4e): ``sum_{k=1}^{K-1} mean_b ||w_{b,k} - w_{b,0}||_2``, penalising each layer's
      offset from the first code. `latent_avg` is not used.
    """
    if latents.ndim != 3:
        raise ValueError(f"`latents` must be (B, K, D), got shape {tuple(latents.shape)}")
    if kind == "w_norm":
        if latent_avg is None or latent_avg.ndim not in (1, 2) or latent_avg.shape[-1] != latents.shape[-1]:
            shape = None if latent_avg is None else tuple(latent_avg.shape)
            raise ValueError(
                f"`latent_avg` must be (D,) or (K, D) with D={latents.shape[-1]} for 'w_norm', got {shape}"
            )
        return (latents - latent_avg).norm(2, dim=(1, 2)).mean()
    if kind == "delta":
        deltas = latents[:, 1:] - latents[:, :1]  # (B, K-1, D)
        return deltas.norm(2, dim=-1).mean(dim=0).sum()
    raise ValueError(f"`kind` must be one of {LATENT_REGULARIZATIONS}, got {kind!r}")


def _negative_mask(key: Tensor, valid: Tensor, negative_threshold: float, rule: str) -> Tensor:
    """(B, N, N) bool: whether k_j is a negative of anchor i (see `correspondence_contrastive_loss`)."""
    num_positions = key.shape[1]
    others = ~torch.eye(num_positions, dtype=torch.bool, device=key.device)
    candidates = valid[:, None, :] & others  # (B, N, N): j valid and j != i
    if rule == "all":
        return candidates
    similarity = (key @ key.transpose(1, 2)).masked_fill(~candidates, float("-inf"))  # cos(k_i, k_j)
    order = similarity.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(num_positions, device=key.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # r_ij, 0 = most similar
    # g·(N-1) per anchor, nudged by a relative 1e-6 so that rounding error cannot push a product that
    # is an integer in exact arithmetic (e.g. 0.7·10) across the ceil/floor.
    scaled = negative_threshold * candidates.sum(dim=-1, keepdim=True).to(key.dtype)  # (B, N, 1)
    if rule == "hardest":
        selected = rank < torch.ceil(scaled * (1 - 1e-6))
    else:  # "exclude_nearest"
        selected = rank >= torch.floor(scaled * (1 + 1e-6))
    return candidates & selected


def correspondence_contrastive_loss(
    query: Tensor,
    key: Tensor,
    temperature: float = 0.07,
    negative_threshold: float = 0.5,
    hard_negative_rule: str = "hardest",
    valid: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Correspondence contrastive loss L_CCL (Eq. 5-6), an InfoNCE over matched positions.

    With q_i, k_i the L2-normalised features of E(I_{2→1}) and of the content F1 at the i-th of N
    positions matched by the alignment (Eq. 1-3), Eq. 6 is, per image and valid anchor i,

        ℓ_i = -log( exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_{j ∈ N_i} exp(q_i·k_j/τ)) ),

    averaged over the valid anchors of the batch. Eq. 5 chooses the negatives N_i among the other
    valid positions j ≠ i of the same image by their rank r_ij under cos(k_i, k_j) (0 = most
    similar content; M = number of valid positions). Its wording is ambiguous, so
    `hard_negative_rule` picks the reading:

    * ``"hardest"``: N_i = {j : r_ij < ceil(g·(M-1))}, the fraction g most similar (hard negatives);
      g = 1 is ``"all"``.
    * ``"exclude_nearest"``: N_i = {j : r_ij ≥ floor(g·(M-1))}, dropping the fraction g most similar
      as likely false negatives.
    * ``"all"``: every other valid position, g ignored (plain PatchNCE).

    An anchor left without negatives contributes log(1) = 0. Gradients flow into both `query` and
    `key` (detach `key` for CUT's stop-gradient).

    Args:
        query: (B, N, C) features of E(I_{2→1}) at the N positions.
        key: (B, N, C) features of F1 at the same positions; key[:, i] is the positive of query[:, i].
        temperature: τ > 0.
        negative_threshold: g in [0, 1].
        hard_negative_rule: one of ``HARD_NEGATIVE_RULES``.
        valid: optional (B, N) bool; invalid positions are neither anchors nor negatives.

    Returns:
        Scalar loss (0 when no position is valid).
    """
    if query.ndim != 3 or key.shape != query.shape:
        raise ValueError(
            f"`query` and `key` must both be (B, N, C), got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    if not 0 <= negative_threshold <= 1:
        raise ValueError(f"`negative_threshold` must be in [0, 1], got {negative_threshold}")
    if hard_negative_rule not in HARD_NEGATIVE_RULES:
        raise ValueError(f"`hard_negative_rule` must be one of {HARD_NEGATIVE_RULES}, got {hard_negative_rule!r}")
    if reduction not in ("mean", "per_image"):
        raise ValueError(f"`reduction` must be 'mean' or 'per_image', got {reduction!r}")
    if valid is None:
        valid = torch.ones(query.shape[:2], dtype=torch.bool, device=query.device)
    elif valid.shape != query.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(
            f"`valid` must be a (B, N) = {tuple(query.shape[:2])} bool tensor, got {valid.dtype} {tuple(valid.shape)}"
        )

    query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    logits = query @ key.transpose(1, 2) / temperature  # (B, N, N): s_ij = q_i·k_j / τ
    positive = logits.diagonal(dim1=1, dim2=2).unsqueeze(-1)  # (B, N, 1): s_ii
    with torch.no_grad():
        negatives = _negative_mask(key, valid, negative_threshold, hard_negative_rule)  # (B, N, N)
    logits = torch.cat([positive, logits.masked_fill(~negatives, float("-inf"))], dim=-1)  # (B, N, 1 + N)
    targets = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)  # positive at index 0
    per_anchor = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(valid)
    per_anchor = per_anchor.masked_fill(~valid, 0)
    if reduction == "per_image":
        return per_anchor.sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    return per_anchor.sum() / valid.sum().clamp_min(1)
