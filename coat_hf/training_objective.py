"""COAT's training objective L = L_rec + α·L_reg + β·L_CCL on a batch of content/style pairs.

For content images I1 (B, 3, S, S) and style images I2 of the same category:

1. Reconstruction (self pair I1 → I1). Matching F1 = E(I1) against itself gives the identity (every
   position is its own mutual nearest neighbour), so Eq. 3 returns F1 and every one of the K
   modulation layers takes E_mod(F1): the reconstruction is D(E_mod(F1)), with
   L_rec = λ_mse·MSE + λ_lpips·LPIPS against I1 and α·L_reg on its style codes.
2. Transfer (I2 → I1). F2 = E(I2) is aligned to F1 (Eq. 1-3), the first n layers take the content's
   codes E_mod(F1) (reused from 1) and the rest the aligned style's E_mod(F^); the output
   I_{2→1} = D(·) is encoded again and L_CCL (Eq. 5-6) asks E(I_{2→1}) at position i to match F1 at
   i rather than F1 at the other positions: the structure of the content survives the transfer.
   The positions are up to ``ccl_num_positions`` mutual matches per image and scale (foreground
   ones only when a mask is given); L_CCL is averaged per image, then over images and scales.

Every random draw of a sample (its n, its decoder noise, its CCL positions) comes from the sample's
own seed, so a batch split over several processes gives the losses of the whole batch on one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import correspondence_contrastive_loss, latent_regularization, load_lpips, reconstruction_loss
from .modeling_coat import COATModel

# Offsets that turn a sample's seed into independent streams for its n, noise and positions.
_N_STREAM, _NOISE_STREAM, _POSITION_STREAM = 1, 2, 3


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 4 + stream) % (2**63))


class COATTrainingObjective(nn.Module):
    """The full objective around a :class:`COATModel`; ``forward`` returns the loss and its parts.

    Args:
        model: the model being trained.
        ccl_scales: which of E's scales take part in L_CCL (default: all).
        transfer_n: n of the transfer branch; None draws it per sample uniformly from 1..K-1.
        lpips_model: a frozen LPIPS (default: ``load_lpips(config.lpips_net)`` when λ_lpips > 0).
    """

    def __init__(self, model: COATModel, ccl_scales: list[int] | None = None, transfer_n: int | None = None,
                 lpips_model: nn.Module | None = None) -> None:
        super().__init__()
        config = model.config
        self.model = model
        self.ccl_scales = list(range(config.num_scales)) if ccl_scales is None else list(ccl_scales)
        if not all(0 <= s < config.num_scales for s in self.ccl_scales):
            raise ValueError(f"ccl_scales must be indices in [0, {config.num_scales}), got {self.ccl_scales}")
        if transfer_n is not None and not 0 <= transfer_n <= config.num_modulation_layers:
            raise ValueError(f"transfer_n must be in [0, {config.num_modulation_layers}], got {transfer_n}")
        self.transfer_n = transfer_n
        if lpips_model is None and config.lambda_lpips > 0:
            lpips_model = load_lpips(config.lpips_net)
        self.lpips = lpips_model
        if self.lpips is not None:
            self.lpips.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "COATTrainingObjective":
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()
        return self

    def _per_sample_n(self, seeds: list[int], device: torch.device) -> Tensor:
        """(B,) n of each sample's transfer: ``transfer_n`` or uniform in 1..K-1 from its seed."""
        k = self.model.config.num_modulation_layers
        if self.transfer_n is not None:
            return torch.full((len(seeds),), self.transfer_n, device=device)
        return torch.cat([torch.randint(1, k, (1,), generator=_generator(s, _N_STREAM)) for s in seeds]).to(device)

    def _decode(self, latents: Tensor, seeds: list[int]) -> Tensor:
        """D with each sample's own noise stream: (B, K, D) -> (B, 3, S, S)."""
        return self.model.decode(latents, generator=[_generator(s, _NOISE_STREAM) for s in seeds])

    def _sample_positions(self, mutual: Tensor, foreground: Tensor | None, seeds: list[int]) -> tuple[Tensor, Tensor]:
        """Up to ``ccl_num_positions`` mutual (and foreground) positions per image: indices and valid, (B, P)."""
        b, n = mutual.shape
        count = min(self.model.config.ccl_num_positions, n)
        eligible = mutual if foreground is None else mutual & foreground
        keys = torch.stack([torch.rand(n, generator=_generator(s, _POSITION_STREAM)) for s in seeds]).to(mutual.device)
        keys = keys.masked_fill(~eligible, 2.0)  # ineligible positions sort last
        index = keys.argsort(dim=1)[:, :count]  # (B, P)
        return index, eligible.gather(1, index)

    def contrastive_loss(self, output_features: list[Tensor], content_features: list[Tensor], correspondences: list,
                         mask: Tensor | None, seeds: list[int]) -> Tensor:
        """L_CCL (Eq. 5-6) between E(I_{2→1}) and F1 at matched positions, mean over images and ``ccl_scales``."""
        config = self.model.config
        losses = []
        for scale in self.ccl_scales:
            query_map, key_map = output_features[scale], content_features[scale]  # (B, C, h, w) each
            foreground = None
            if mask is not None:
                foreground = F.interpolate(mask, size=key_map.shape[-2:], mode="area").flatten(1) > 0.5  # (B, h·w)
            index, valid = self._sample_positions(correspondences[scale].mutual, foreground, seeds)
            gather = index[:, :, None].expand(-1, -1, key_map.shape[1])
            query = query_map.flatten(2).transpose(1, 2).gather(1, gather)  # (B, P, C)
            key = key_map.flatten(2).transpose(1, 2).gather(1, gather)  # (B, P, C)
            per_image = [
                correspondence_contrastive_loss(
                    query[i : i + 1], key[i : i + 1], config.ccl_temperature, config.ccl_negative_threshold,
                    config.ccl_hard_negative_rule, valid[i : i + 1],
                )
                for i in range(query.shape[0])
            ]
            losses.append(torch.stack(per_image).mean())
        return torch.stack(losses).mean()

    def forward(self, content: Tensor, style: Tensor, seeds: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The objective on a batch.

        Args:
            content: I1, (B, 3, S, S) in [-1, 1].
            style: I2, same shape.
            seeds: (B,) int64 per-sample seeds (from the data pipeline).
            mask: optional (B, 1, S, S) foreground of I1 weighting L_rec and restricting L_CCL's positions.

        Returns:
            ``loss`` (scalar L), the parts ``rec``, ``mse``, ``lpips``, ``reg``, ``ccl`` (detached), and
            the images ``reconstruction`` and ``transfer`` (B, 3, S, S), with their graphs (for an
            adversarial term).
        """
        model, config = self.model, self.model.config
        seed_list = [int(s) for s in seeds.tolist()]
        content_features = model.encode(content)  # F1: L maps
        style_features = model.encode(style)  # F2
        content_latents = model.style_vectors(content_features)  # (B, K, D)

        # 1. Reconstruction from the self pair: all K layers take E_mod(F1).
        reconstruction = self._decode(content_latents, seed_list)  # (B, 3, S, S)
        rec, rec_parts = reconstruction_loss(reconstruction, content, self.lpips, config.lambda_mse,
                                             config.lambda_lpips, mask)
        reg = latent_regularization(content_latents, model.latent_avg, config.reg_type)

        # 2. Transfer I2 -> I1 with a per-sample n, then L_CCL on E(I_{2->1}) against F1.
        aligned, correspondences = model.align(content_features, style_features)
        style_latents = model.style_vectors(aligned)  # (B, K, D)
        n = self._per_sample_n(seed_list, content.device)  # (B,)
        layer = torch.arange(config.num_modulation_layers, device=content.device)
        latents = torch.where((layer[None, :] < n[:, None])[:, :, None], content_latents, style_latents)
        transfer = self._decode(latents, seed_list)  # (B, 3, S, S)
        ccl = self.contrastive_loss(model.encoder(transfer), content_features, correspondences, mask, seed_list)

        loss = rec + config.reg_alpha * reg + config.ccl_beta * ccl
        parts = {"rec": rec, "reg": reg, "ccl": ccl, **rec_parts}
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()},
                "reconstruction": reconstruction, "transfer": transfer}
