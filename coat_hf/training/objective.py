"""COAT's training objective L = L_rec + α·L_reg + β·L_CCL (+ γ·L_transfer + w·L_color + u·L_local + s·L_struct
+ t·L_tex + h·L_hist).

For content images I1 (B, 3, S, S) and style images I2 of the same category:

1. Reconstruction (self pair I1 → I1). Matching F1 = E(I1) against itself gives the identity (every
   position is its own mutual nearest neighbour), so Eq. 3 returns F1 and every one of the K
   modulation layers takes E_mod(F1): the reconstruction is D(E_mod(F1)), with
   L_rec = λ_mse·MSE + λ_lpips·LPIPS against I1 and α·L_reg on its style codes.
2. Transfer (I2 → I1). F2 = E(I2) is aligned to F1, the first n layers take the content's codes
   E_mod(F1) (reused from 1) and the rest the aligned style's E_mod(F^); the output I_{2→1} = D(·) is
   encoded again and L_CCL (Eq. 5-6) asks E(I_{2→1}) at position i to match F1 at i rather than F1 at
   the other positions: the structure of the content survives the transfer (with ``style_mixing_prob``, layers
   from a random crossover on take a second sample's style: StyleGAN2's style mixing). The positions are up to
   ``ccl_num_positions`` mutual matches per image and scale (foreground ones only when a mask is
   given); L_CCL is averaged per image, then over images and scales, in one batched call.
3. The supervised transfer term (``transfer_weight`` γ > 0; a departure from the paper, see
   :mod:`coat_hf.training.pseudo_pairs`): a pseudo-exemplar style I_s (I1 with another appearance,
   warped) and its target T (the same appearance, unwarped); L_transfer = L_rec(D(content codes for
   layers < n, aligned I_s codes for layers ≥ n), T) with n drawn per sample in 0..K-1.

4. L_color (``color_weight`` > 0; a departure): the transfer I_{2→1}'s Lab mean and standard deviation per channel
   pulled to I2's (:func:`coat_hf.losses.color_statistics_loss`), per sample weighted by ((K − n)/K)^p
   (p = ``color_falloff``: 1 linear, smaller reaches the finer layers' transfers at large n harder).
5. L_local (``local_color_weight`` u > 0; a departure): Eq. 3 read in colour. At each mutual match (i, j) of the
   scale ``local_color_scale``, I_{2→1}'s mean Lab colour in cell i pulled to I2's in cell j
   (:func:`coat_hf.losses.matched_color_loss`), with L_color's per-sample weight: the style's colours where the
   alignment put them, not only its global statistics.
6. L_struct (``structure_weight`` > 0; a departure): STROTSS's self-similarity distance between I_{2→1}'s and I1's
   hypercolumns of the frozen LPIPS backbone (:func:`coat_hf.losses.structure_loss`): the content's layout kept
   whatever colours the transfer takes, at every n.
7. L_tex (``texture_weight`` t > 0; a departure): the squared sliced Wasserstein distance between I_{2→1}'s and I2's
   hypercolumns of the frozen LPIPS backbone (:func:`coat_hf.losses.texture_loss`, directions drawn per sample),
   with L_color's per-sample weight: the style's textures and colours wherever they lie.
8. L_hist (``histogram_weight`` h > 0; a departure): the squared sliced Wasserstein distance between I_{2→1}'s and
   I2's Lab pixels (:func:`coat_hf.losses.color_distribution_loss`, directions drawn per sample), with L_color's
   per-sample weight: the style's whole colour histogram, where L_color matches its means and deviations only.

With a structure code (``structure_channels`` > 0, a departure: :class:`coat_hf.encoders.StructureCode`) every
output of D (reconstruction, transfer, pseudo-exemplar transfer) takes I1's code: all three keep the content's layout.
With ``structure_view`` the code is computed from I1 under another random appearance
(:func:`coat_hf.training.pseudo_pairs.structure_view`): it keeps the layout but cannot carry I1's colours.

With ``batch_branches`` (the default on accelerators) each network is called once per step on the branches'
concatenated batches (E on I1, I2, I_s and the code's view; one alignment for both styles; E_mod and D on all
three), its outputs split back: the same losses in fewer, larger kernels.

Every random draw of a sample (its n, its decoder noise, its CCL positions, its pseudo pair) is a
counter-based draw keyed by the sample (:mod:`coat_hf.training.random`), made on the device: a batch
split over several processes gives the losses of the whole batch on one, and a step never waits for
the host.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configuration_coat import ALIGNMENT_RULES
from ..losses import (HARD_NEGATIVE_RULES, LATENT_REGULARIZATIONS, color_distribution_loss, color_statistics_loss,
                      correspondence_contrastive_loss, latent_regularization, load_lpips, matched_color_loss,
                      reconstruction_loss, structure_loss, texture_loss)
from ..modeling_coat import COATModel, mix_latents
from .pseudo_pairs import PseudoPairOptions, pseudo_exemplar_pair, structure_view
from .random import normal, randint, uniform

# Stream ids of the objective's draws (see coat_hf.training.random).
_N_STREAM, _PSEUDO_N_STREAM, _MIX_STREAM, _CROSSOVER_STREAM, _POSITION_STREAM, _TEXTURE_STREAM = 1, 2, 3, 4, 10, 20
_HISTOGRAM_STREAM, _NOISE_STREAM = 30, 1000


@dataclass
class ObjectiveConfig:
    """Loss weights and options of :class:`COATTrainingObjective` (the model's config keeps the architecture)."""

    lambda_mse: float = field(default=1.0, metadata={"help": "λ_mse, weight of the MSE part of L_rec."})
    lambda_lpips: float = field(default=0.8, metadata={"help": "λ_lpips, weight of the LPIPS part of L_rec."})
    lpips_net: str = field(default="alex", metadata={"help": "LPIPS backbone: alex or vgg."})
    reg_alpha: float = field(default=1e-3, metadata={"help": "α, weight of L_reg."})
    reg_type: str = field(default="w_norm", metadata={"help": "L_reg: w_norm (pSp) or delta (e4e)."})
    ccl_beta: float = field(default=0.1, metadata={"help": "β, weight of L_CCL (0 leaves it out)."})
    ccl_temperature: float = field(default=0.07, metadata={"help": "τ of L_CCL (Eq. 6)."})
    ccl_negative_threshold: float = field(default=0.5, metadata={"help": "g of Eq. 5's hard-negative rule."})
    ccl_hard_negative_rule: str = field(default="hardest", metadata={
        "help": "Reading of Eq. 5: hardest, exclude_nearest or all (see coat_hf.losses)."})
    ccl_num_positions: int = field(default=256, metadata={"help": "Matched positions per image and scale in L_CCL."})
    ccl_scales: list[int] | None = field(default=None, metadata={"help": "E's scales in L_CCL (default: all)."})
    transfer_n: int | None = field(default=None, metadata={
        "help": "n of the L_CCL transfer branch (default: drawn per sample in 1..K-1)."})
    transfer_weight: float = field(default=0.0, metadata={
        "help": "γ, weight of the supervised pseudo-exemplar transfer term (0: the paper's objective)."})
    color_weight: float = field(default=0.0, metadata={
        "help": "Weight of L_color (a departure, 0: off): the L_CCL transfer's Lab mean and deviation per channel "
                "pulled to its style photo's, per sample weighted by ((K - n) / K)^p (p: color_falloff), the share "
                "of layers the style sets; samples whose finest layers a mixed-in style sets are left out."})
    color_falloff: float = field(default=1.0, metadata={
        "help": "Exponent p of L_color's per-sample weight ((K - n) / K)^p: 1 falls linearly with n; smaller values "
                "pull the finer layers' transfers (large n) harder (0.5: square root; 0: every n < K alike)."})
    local_color_weight: float = field(default=0.0, metadata={
        "help": "Weight of L_local (a departure, 0: off): at each mutual match (i, j) of the scale local_color_scale, "
                "the L_CCL transfer's mean Lab colour in cell i pulled to its style photo's in cell j, with "
                "L_color's per-sample weight ((K - n) / K)^p: the style's colours where the alignment puts them."})
    local_color_scale: int = field(default=2, metadata={
        "help": "E's scale whose matches and grid L_local uses (2: the 16 x 16 grid of a 128-pixel model; checked "
                "only when local_color_weight > 0)."})
    structure_weight: float = field(default=0.0, metadata={
        "help": "Weight of L_struct (a departure, 0: off): STROTSS's self-similarity distance between the L_CCL "
                "transfer's and the content's hypercolumns of the frozen LPIPS backbone (16 x 16 grid); loads the "
                "LPIPS network even when lambda_lpips is 0."})
    texture_weight: float = field(default=0.0, metadata={
        "help": "Weight of L_tex (a departure, 0: off): the squared sliced Wasserstein distance between the L_CCL "
                "transfer's and its style photo's hypercolumns of the frozen LPIPS backbone (32 x 32 grid, "
                "texture_projections random directions per sample), with L_color's per-sample weight: the style's "
                "textures, not only its colours; loads the LPIPS network even when lambda_lpips is 0."})
    texture_projections: int = field(default=64, metadata={
        "help": "Random directions per sample and step of L_tex's sliced Wasserstein distance."})
    histogram_weight: float = field(default=0.0, metadata={
        "help": "Weight of L_hist (a departure, 0: off): the squared sliced Wasserstein distance between the L_CCL "
                "transfer's and its style photo's Lab pixels (histogram_projections random directions per sample), "
                "with L_color's per-sample weight: the style's whole colour histogram, where L_color matches its "
                "means and deviations only."})
    histogram_projections: int = field(default=16, metadata={
        "help": "Random directions of Lab space per sample and step of L_hist's sliced Wasserstein distance."})
    structure_view: bool = field(default=False, metadata={
        "help": "With a structure code (structure_channels > 0): compute it in training from the content under a "
                "random other appearance (colour, contrast, saturation, gamma and some of the style photo's "
                "colour statistics), so that D cannot take the content's colours from it and takes them from the "
                "style codes; at inference the code sees the content as it is (a departure; one more pass of E)."})
    style_mixing_prob: float = field(default=0.0, metadata={
        "help": "Probability that a sample's L_CCL transfer mixes in a second style from a crossover layer on "
                "(StyleGAN2's style mixing; a departure from COAT; 0: off). The appearance terms skip a sample whose "
                "last layer is mixed in: at 0.9 they reach about a quarter of the transfers, at 0.3 about three "
                "quarters (K = 12)."})
    train_alignment: str | None = field(default=None, metadata={
        "help": "Alignment rule in training (mutual, nearest or soft; default: the model's, which stays the "
                "rule at inference)."})
    batch_branches: bool | None = field(default=None, metadata={
        "help": "Give the branches one call per network on their concatenated batches: E on I1, I2 (and I_s), one "
                "alignment for both styles, E_mod and D for all outputs (fewer, larger kernels; each network traced "
                "once when compiled). Default: on accelerators, not on CPUs (there the larger working set made the "
                "step slower)."})

    def branches_batched(self, device: torch.device) -> bool:
        """Whether the branches share one call per network on ``device`` (``batch_branches`` resolved)."""
        return device.type != "cpu" if self.batch_branches is None else self.batch_branches

    def __post_init__(self) -> None:
        if self.reg_type not in LATENT_REGULARIZATIONS:
            raise ValueError(f"reg_type must be one of {LATENT_REGULARIZATIONS}, got {self.reg_type!r}")
        if self.ccl_hard_negative_rule not in HARD_NEGATIVE_RULES:
            raise ValueError(f"ccl_hard_negative_rule must be one of {HARD_NEGATIVE_RULES}, "
                             f"got {self.ccl_hard_negative_rule!r}")
        for name in ("lambda_mse", "lambda_lpips", "reg_alpha", "ccl_beta", "transfer_weight", "color_weight",
                     "color_falloff", "local_color_weight", "structure_weight", "texture_weight", "histogram_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.train_alignment is not None and self.train_alignment not in ALIGNMENT_RULES:
            raise ValueError(f"train_alignment must be one of {ALIGNMENT_RULES}, got {self.train_alignment!r}")
        if not 0 <= self.style_mixing_prob <= 1:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {self.style_mixing_prob}")
        if self.ccl_num_positions < 1:
            raise ValueError(f"ccl_num_positions must be positive, got {self.ccl_num_positions}")
        for name in ("texture_projections", "histogram_projections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def branch_calls(fn: Callable, inputs: list, batched: bool) -> list:
    """``[fn(x) for x in inputs]``, each x a tensor or a tuple / list of tensors (nested alike) with one batch size.
    ``batched``: one call on the inputs concatenated along the batch, its output (tensors, tuples, lists) split back
    per input."""
    if not batched or len(inputs) == 1:
        return [fn(x) for x in inputs]
    return _split(fn(_concatenate(inputs)), len(inputs))


def _concatenate(items: list):
    if isinstance(items[0], Tensor):
        return torch.cat(items)
    return type(items[0])(_concatenate(list(parts)) for parts in zip(*items, strict=True))


def _split(output, count: int) -> list:
    if isinstance(output, Tensor):
        return list(output.chunk(count))
    parts = [_split(item, count) for item in output]
    return [type(output)(part[i] for part in parts) for i in range(count)]


def foreground_cells(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """The cells of a (h, w) grid at least half covered by a (B, 1, S, S) foreground mask: (B, h, w) bool."""
    return F.interpolate(mask, size=size, mode="area")[:, 0] > 0.5


def per_sample_noise(model: COATModel, keys: Tensor) -> list[Tensor]:
    """D's noise maps drawn from each sample's key: (B, 1, r, r) per StyledConv (stream ``_NOISE_STREAM + i`` for the
    i-th), the layers of one resolution drawn together."""
    maps, first = [], 0
    for r, run in itertools.groupby(model.decoder.noises.resolutions):  # runs of one resolution: D's convs there
        m = len(list(run))
        streams = torch.arange(first, first + m, device=keys.device) + _NOISE_STREAM
        maps += normal(keys, streams, r * r).view(-1, m, 1, r, r).unbind(1)
        first += m
    return maps


class COATTrainingObjective(nn.Module):
    """The full objective around a :class:`COATModel`; ``forward`` returns the loss and its parts.

    Args:
        model: the model being trained.
        config: the loss weights and options.
        lpips_model: a frozen LPIPS (default: ``load_lpips(config.lpips_net)`` when λ_lpips > 0). It is
            not a submodule: checkpoints and ``state_dict`` hold the trained model alone.
        pseudo_pairs: the ranges of the transfer term's pseudo pairs.
    """

    def __init__(self, model: COATModel, config: ObjectiveConfig | None = None, lpips_model: nn.Module | None = None,
                 pseudo_pairs: PseudoPairOptions | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config = config or ObjectiveConfig()
        num_scales, k = model.config.num_scales, model.config.num_modulation_layers
        self.ccl_scales = list(range(num_scales)) if config.ccl_scales is None else list(config.ccl_scales)
        if not self.ccl_scales or not all(0 <= s < num_scales for s in self.ccl_scales):
            raise ValueError(f"ccl_scales must be indices in [0, {num_scales}), got {config.ccl_scales}")
        if config.local_color_weight > 0 and not 0 <= config.local_color_scale < num_scales:
            raise ValueError(f"local_color_scale must be an index in [0, {num_scales}), got {config.local_color_scale}")
        if config.transfer_n is not None and not 0 <= config.transfer_n <= k:
            raise ValueError(f"transfer_n must be in [0, {k}], got {config.transfer_n}")
        if config.structure_view and not model.config.structure_channels:
            raise ValueError("structure_view needs a structure code: set the model's structure_channels > 0")
        if lpips_model is None and max(config.lambda_lpips, config.structure_weight, config.texture_weight) > 0:
            lpips_model = load_lpips(config.lpips_net)
        if lpips_model is not None:
            lpips_model.requires_grad_(False).eval()
        self._lpips = [lpips_model]  # a list hides it from state_dict, parameters() and DDP
        self.pseudo_pairs = pseudo_pairs or PseudoPairOptions()

    @property
    def lpips(self) -> nn.Module | None:
        return self._lpips[0]

    def _apply(self, fn, recurse: bool = True):  # keep the hidden LPIPS on the model's device and dtype
        super()._apply(fn, recurse)
        if self.lpips is not None:
            self.lpips._apply(fn, recurse)
        return self

    def _rec(self, output: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.config
        return reconstruction_loss(output, target, self.lpips, c.lambda_mse, c.lambda_lpips, mask)

    def _transfer_n(self, keys: Tensor) -> Tensor:
        """(B,) n of each sample's L_CCL transfer: ``transfer_n`` or uniform in 1..K-1."""
        k = self.model.config.num_modulation_layers
        if self.config.transfer_n is not None:
            return torch.full_like(keys, self.config.transfer_n)
        return randint(keys, _N_STREAM, 1, max(k, 2))

    def _style_mixing(self, latents: Tensor, style_latents: Tensor, n: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Style mixing in the transfer branch (StyleGAN2 Sec. 4's regulariser carried to COAT's hybrids): with
        probability ``style_mixing_prob`` a sample's layers from a crossover m, uniform in n..K, take the aligned
        style vectors of the next sample in its process's batch (its style aligned to its own content). The
        decoder (and the adversarial term, when on) then sees hybrids of three photos, not only of two.
        (B, K, D) each, ``n`` (B,) -> the mixed (B, K, D) and (B,) whether a sample's last layer is mixed in."""
        k = self.model.config.num_modulation_layers
        crossover = n + (uniform(keys, _CROSSOVER_STREAM, 1)[:, 0] * (k - n + 1)).long().clamp_max(k - n)
        mixed = uniform(keys, _MIX_STREAM, 1)[:, 0] < self.config.style_mixing_prob
        crossover = torch.where(mixed, crossover, k)
        return mix_latents(latents, style_latents.roll(1, dims=0), crossover), crossover < k

    def _sample_positions(self, mutual: Tensor, foreground: Tensor | None, keys: Tensor, scale: int
                          ) -> tuple[Tensor, Tensor]:
        """Up to ``ccl_num_positions`` mutual (and foreground) positions per image: indices and valid, (B, P)."""
        n = mutual.shape[1]
        count = min(self.config.ccl_num_positions, n)
        eligible = mutual if foreground is None else mutual & foreground
        order_keys = uniform(keys, _POSITION_STREAM + scale, n).masked_fill(~eligible, 2.0)  # ineligible last
        index = order_keys.argsort(dim=1)[:, :count]  # (B, P)
        return index, eligible.gather(1, index)

    def contrastive_loss(self, output_features: list[Tensor], content_features: list[Tensor], mutual: list[Tensor],
                         mask: Tensor | None, keys: Tensor) -> Tensor:
        """L_CCL (Eq. 5-6) between E(I_{2→1}) and F1 at matched positions (``mutual``: each scale's (B, h·w) mutual
        matches of I1 and I2), mean over images and ``ccl_scales``.

        All images and scales go through one call: each scale's (B, P_s, C_s) queries and keys are
        zero-padded to the largest P and C (padding is marked invalid), stacked to (S·B, P, C).
        """
        queries, keys_, valids = [], [], []
        for scale in self.ccl_scales:
            query_map, key_map = output_features[scale], content_features[scale]  # (B, C, h, w) each
            foreground = None if mask is None else foreground_cells(mask, key_map.shape[-2:]).flatten(1)  # (B, h·w)
            index, valid = self._sample_positions(mutual[scale], foreground, keys, scale)
            gather = index[:, :, None].expand(-1, -1, key_map.shape[1])
            queries.append(query_map.flatten(2).transpose(1, 2).gather(1, gather))  # (B, P, C)
            keys_.append(key_map.flatten(2).transpose(1, 2).gather(1, gather))  # (B, P, C)
            valids.append(valid)
        p = max(q.shape[1] for q in queries)
        c = max(q.shape[2] for q in queries)

        def stack(items: list[Tensor], value: float | bool) -> Tensor:
            padded = [F.pad(t, (0, c - t.shape[2], 0, p - t.shape[1]), value=value) if t.ndim == 3
                      else F.pad(t, (0, p - t.shape[1]), value=value) for t in items]
            return torch.cat(padded)

        cfg = self.config
        per_image = correspondence_contrastive_loss(
            stack(queries, 0.0).float(), stack(keys_, 0.0).float(), cfg.ccl_temperature,
            cfg.ccl_negative_threshold, cfg.ccl_hard_negative_rule, stack(valids, False), reduction="per_image",
        )  # (S·B,)
        return per_image.mean()

    def forward(self, content: Tensor, style: Tensor, keys: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The objective on a batch.

        Args:
            content: I1, (B, 3, S, S) in [-1, 1].
            style: I2, same shape.
            keys: (B,) int64 per-sample keys (from the data schedule) that seed every draw.
            mask: optional (B, 1, S, S) foreground of I1 weighting L_rec and restricting L_CCL's positions.

        Returns:
            ``loss`` (scalar L), the parts ``rec``, ``mse``, ``lpips``, ``reg`` and those of the terms in use
            (``ccl``, ``color``, ``local_color``, ``structure``, ``texture``, ``histogram``, ``transfer``; detached),
            and the images ``reconstruction`` and ``transfer_images`` (B, 3, S, S), with their graphs (for an
            adversarial term).
        """
        model, cfg = self.model, self.config
        k = model.config.num_modulation_layers
        batched = cfg.branches_batched(content.device)

        def shared(fn: Callable, inputs: list) -> list:
            return branch_calls(fn, inputs, batched)

        noise = per_sample_noise(model, keys)
        images = [content, style]  # I1, I2 (and the pseudo-exemplar style I_s of 3.)
        if cfg.transfer_weight > 0:
            pseudo_style, target = pseudo_exemplar_pair(content, style, keys, self.pseudo_pairs)
            images.append(pseudo_style)
        view = [structure_view(content, style, keys, self.pseudo_pairs)] if cfg.structure_view else []
        features = shared(model.encoder, images + view)  # F1, F2 (, F_s) (, E of the code's view): L maps each
        structure = model.structure(features.pop() if cfg.structure_view else features[0])  # None: the paper's D
        matching = [model.matching_maps(x, f) for x, f in zip(images, features)]  # what Eq. 1 compares

        def align(pair: tuple) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:  # F^, (nearest, mutual) per scale
            aligned, found = model.align(pair[0], pair[1], cfg.train_alignment, content_keys=pair[2],
                                         style_keys=pair[3])
            return aligned, [(m.nearest, m.mutual) for m in found]

        (aligned, matches), *pseudo_aligned = shared(
            align, [(features[0], f, matching[0], m) for f, m in zip(features[1:], matching[1:])])
        latents = shared(model.style_vectors, [features[0], aligned, *[a for a, _ in pseudo_aligned]])
        content_latents, style_latents = latents[:2]  # (B, K, D) each

        # 1. Reconstruction from the self pair: all K layers take E_mod(F1).
        # 2. Transfer I2 -> I1 with a per-sample n; L_CCL on E(I_{2->1}) against F1.
        # 3. The supervised transfer term on pseudo-exemplar pairs (the real style photo lends its colours).
        n = self._transfer_n(keys)
        transfer_latents = mix_latents(content_latents, style_latents, n)
        mixed_in = None
        if cfg.style_mixing_prob > 0:
            transfer_latents, mixed_in = self._style_mixing(transfer_latents, style_latents, n, keys)
        decoded = [content_latents, transfer_latents]
        if cfg.transfer_weight > 0:
            decoded.append(mix_latents(content_latents, latents[2], randint(keys, _PSEUDO_N_STREAM, 0, k)))
        inputs = [(latents_, noise) if structure is None else (latents_, noise, structure) for latents_ in decoded]
        outputs = shared(lambda inputs_: model.decoder(*inputs_), inputs)
        reconstruction, transfer = outputs[:2]  # (B, 3, S, S) each

        rec, parts = self._rec(reconstruction, content, mask)
        parts = {"rec": rec, **parts, "reg": latent_regularization(content_latents, model.latent_avg, cfg.reg_type)}
        loss = rec + cfg.reg_alpha * parts["reg"]
        if cfg.ccl_beta > 0:
            parts["ccl"] = self.contrastive_loss(model.encoder(transfer), features[0], [m for _, m in matches], mask,
                                                 keys)
            loss = loss + cfg.ccl_beta * parts["ccl"]
        # 4., 5., 7. and 8. pulled harder the more layers the style sets; not where a mixed-in style ends
        style_share = ((k - n).float() / k) ** cfg.color_falloff  # (B,); 0 at n = K for every p > 0
        if mixed_in is not None:
            style_share = torch.where(mixed_in, 0.0, style_share)
        if cfg.color_weight > 0:
            parts["color"] = color_statistics_loss(transfer, style, style_share)
            loss = loss + cfg.color_weight * parts["color"]
        if cfg.local_color_weight > 0:
            scale = cfg.local_color_scale
            grid = features[0][scale].shape[-2:]
            nearest, valid = (m.unflatten(1, grid) for m in matches[scale])  # (B, h, w) each
            if mask is not None:
                valid = valid & foreground_cells(mask, grid)
            parts["local_color"] = matched_color_loss(transfer, style, nearest, valid, style_share)
            loss = loss + cfg.local_color_weight * parts["local_color"]
        if cfg.structure_weight > 0:  # 6. the content's layout, at every n
            parts["structure"] = structure_loss(self.lpips, transfer, content)
            loss = loss + cfg.structure_weight * parts["structure"]
        if cfg.texture_weight > 0:  # 7. the style's textures, weighted as 4. and 5.
            shape = (keys.shape[0], sum(self.lpips.chns), cfg.texture_projections)  # (B, C, P)
            directions = normal(keys, _TEXTURE_STREAM, shape[1] * shape[2]).view(shape)
            parts["texture"] = texture_loss(self.lpips, transfer, style, directions, style_share)
            loss = loss + cfg.texture_weight * parts["texture"]
        if cfg.histogram_weight > 0:  # 8. the style's colour histogram, weighted as 4. and 5.
            shape = (keys.shape[0], 3, cfg.histogram_projections)  # (B, 3, P)
            directions = normal(keys, _HISTOGRAM_STREAM, shape[1] * shape[2]).view(shape)
            parts["histogram"] = color_distribution_loss(transfer, style, directions, style_share)
            loss = loss + cfg.histogram_weight * parts["histogram"]
        if cfg.transfer_weight > 0:
            parts["transfer"], _ = self._rec(outputs[2], target, mask)
            loss = loss + cfg.transfer_weight * parts["transfer"]

        return {"loss": loss, **{k: v.detach() for k, v in parts.items()},
                "reconstruction": reconstruction, "transfer_images": transfer}
