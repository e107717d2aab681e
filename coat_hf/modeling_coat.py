"""COAT: correspondence-driven object appearance transfer (Jeon et al., BMVC 2022) as a PreTrainedModel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.loading_report import LoadStateDictInfo

from .configuration_coat import ALIGNMENT_RULES, COATConfig
from .correspondence import Correspondence, align_features
from .encoders import FeatureEncoder, ModulationEncoder, StructureCode
from .stylegan2 import StyleGAN2Synthesis


@dataclass
class COATOutput(ModelOutput):
    """Output of :meth:`COATModel.forward`.

    Args:
        images: the transfer I_{2->1}, (B, 3, H, W) in about [-1, 1].
        latents: the mixed style vectors fed to D, (B, K, D): content for layers < n, aligned style after.
        content_latents: E_mod(F1), (B, K, D).
        style_latents: E_mod(F^) (or of the raw style maps without alignment), (B, K, D).
        correspondences: one :class:`~coat_hf.correspondence.Correspondence` per scale, when asked.
    """

    images: Tensor | None = None
    latents: Tensor | None = None
    content_latents: Tensor | None = None
    style_latents: Tensor | None = None
    correspondences: tuple[Correspondence, ...] | None = None


def mix_latents(content_latents: Tensor, style_latents: Tensor, n: int | Tensor) -> Tensor:
    """The first ``n`` modulation layers take the content's vectors, the rest the style's. (B, K, D) each;
    ``n`` is one int for the batch or a (B,) tensor, one n per sample (training draws them)."""
    layer = torch.arange(content_latents.shape[1], device=content_latents.device)
    n = torch.as_tensor(n, device=content_latents.device)
    mask = layer < n[..., None]  # (K,) or (B, K)
    return torch.where(mask.expand(content_latents.shape[:2])[:, :, None], content_latents, style_latents)


_LEGACY_KEYS = {r"^structure_code\.": "structure_codes.0."}
"""transformers' ``key_mapping`` from the single structure code's weight names to the first of the list."""


class COATPreTrainedModel(PreTrainedModel):
    config_class = COATConfig
    base_model_prefix = "coat"
    main_input_name = "content_pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Each module's own ``reset_parameters`` (StyleGAN2's init for D, PyTorch's for E's convs).

        Runs under transformers' init guard, so loaded weights are kept; it also re-creates the blur
        kernels, which meta-device loading would otherwise leave empty.
        """
        if isinstance(module, COATModel):
            init.zeros_(module.latent_avg)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``; checkpoints from before the structure code took a list of scales
        (one ``structure_code.*``) load into the first code, ``structure_codes.0.*``."""
        kwargs.setdefault("key_mapping", _LEGACY_KEYS)
        return super().from_pretrained(*args, **kwargs)

    def _adjust_missing_and_unexpected_keys(self, loading_info: LoadStateDictInfo) -> None:
        """transformers' loading hook, extended: a checkpoint that lacks weights is refused, since they would
        otherwise stay randomly initialised with only a logged warning. The one exception is a structure code
        asked for over a model trained without it (``structure_channels`` or another ``structure_scale`` passed
        to ``from_pretrained``): it starts at zero, so the model decodes as before and training continues from
        there."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        missing = sorted(key for key in loading_info.missing_keys if not key.startswith("structure_codes."))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} of the model's weights ({', '.join(missing[:4])}"
                             f"{', ...' if len(missing) > 4 else ''}); they would stay random")


class COATModel(COATPreTrainedModel):
    """COAT: encoder E, latent alignment (Eq. 1-3), modulation encoder E_mod and StyleGAN2 decoder D (with the
    content's spatial structure code when ``config.structure_channels`` > 0, a departure).

    ``model(content, style, n)`` re-renders the content object with the style object's appearance.
    Images are (B, 3, S, S) in [-1, 1] at ``config.image_size``.
    """

    def __init__(self, config: COATConfig) -> None:
        super().__init__(config)
        self.encoder = FeatureEncoder(config.in_channels, config.encoder_channels)
        self.modulation_encoder = ModulationEncoder(
            config.encoder_channels, config.feature_sizes, config.style_dim, config.style_scales,
            config.modulation_pyramid,
        )
        self.decoder = StyleGAN2Synthesis(config.image_size, config.style_dim, config.decoder_channels,
                                          config.blur_kernel)
        self.structure_codes = None
        if config.structure_channels > 0:  # a departure: the content's layout reaches D spatially, one code per scale,
            # each to D's width at its map's resolution (decoder_channels lists 4, 8, ..., S)
            self.structure_codes = nn.ModuleList(
                StructureCode(config.encoder_channels[scale], config.structure_channels,
                              config.decoder_channels[int(math.log2(config.feature_sizes[scale])) - 2])
                for scale in config.structure_scales)
        # The decoder's average latent: E_mod predicts offsets from it (pSp), L_reg pulls towards it.
        self.register_buffer("latent_avg", torch.zeros(config.style_dim))
        self.post_init()

    @property
    def num_modulation_layers(self) -> int:
        """K: n ranges over 0..K; n = K keeps the content entirely."""
        return self.config.num_modulation_layers

    def _check_pixel_values(self, pixel_values: Tensor, name: str) -> None:
        size = self.config.image_size
        if not isinstance(pixel_values, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, 3, {size}, {size}), got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(
                f"{name} must be (B, {self.config.in_channels}, {size}, {size}), got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[2:] != (size, size):
            raise ValueError(
                f"{name} is {pixel_values.shape[2]}x{pixel_values.shape[3]} but this model works at {size}x{size}: "
                "resize first (the coat-appearance-transfer pipeline does it for you)"
            )
        if not torch.isfinite(pixel_values).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    def _check_n(self, n: int | None) -> int:
        n = self.config.default_n if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.num_modulation_layers:
            raise ValueError(f"n must be an integer in [0, {self.num_modulation_layers}], got {n!r}")
        return n

    def encode(self, pixel_values: Tensor) -> list[Tensor]:
        """E: (B, 3, S, S) -> L maps F_l, (B, C_l, S/2^(l+1), S/2^(l+1)), shallow to deep."""
        self._check_pixel_values(pixel_values, "pixel_values")
        return self.encoder(pixel_values)

    def _check_alignment(self, alignment: str | None) -> str:
        alignment = self.config.alignment if alignment is None else alignment
        if alignment not in ALIGNMENT_RULES:
            raise ValueError(f"alignment must be one of {ALIGNMENT_RULES}, got {alignment!r}")
        return alignment

    def matching_maps(self, pixel_values: Tensor, features: list[Tensor]) -> list[Tensor]:
        """What Eq. 1 compares at each scale: E's maps ``features`` (``config.match_features = "encoder"``, the
        paper) or frozen VGG16 maps of ``pixel_values`` (B, 3, S, S) at the same strides (``"vgg16"``)."""
        if self.config.match_features == "encoder":
            return features
        vgg = self.__dict__.get("_vgg_matching")  # kept out of the module tree: frozen, never saved
        if vgg is None:
            try:
                from .matching_features import VGGMatchingMaps
            except ImportError as err:  # torchvision and lpips come with the [eval] and [train] extras
                raise ImportError(f"match_features 'vgg16' needs torchvision and lpips ({err}): "
                                  "pip install 'coat-hf[eval]'") from err
            vgg = self.__dict__["_vgg_matching"] = VGGMatchingMaps(self.config.feature_strides)
        with torch.no_grad():
            return vgg.to(pixel_values.device)(pixel_values)

    def align(self, content_features: list[Tensor], style_features: list[Tensor], alignment: str | None = None,
              return_matches: bool = True, content_keys: list[Tensor] | None = None,
              style_keys: list[Tensor] | None = None) -> tuple[list[Tensor], list[Correspondence | None]]:
        """Eq. 1-3 (or the rule ``alignment``, default ``config.alignment``) at every scale: aligned style
        maps F^_l and their matches (``None`` where ``return_matches`` is False and the rule does not need them,
        see :func:`~coat_hf.correspondence.align_features`). ``content_keys`` / ``style_keys``, when given, are
        the maps Eq. 1-2 compare instead of the features (see :meth:`matching_maps`)."""
        rule = self._check_alignment(alignment)
        content_keys = content_features if content_keys is None else content_keys
        style_keys = style_features if style_keys is None else style_keys
        pairs = [align_features(f1, f2, self.config.alignment_block_size, rule, self.config.alignment_temperature,
                                return_matches, k1, k2, self.config.alignment_kernel)
                 for f1, f2, k1, k2 in zip(content_features, style_features, content_keys, style_keys, strict=True)]
        return [a for a, _ in pairs], [m for _, m in pairs]

    def style_vectors(self, features: list[Tensor]) -> Tensor:
        """E_mod: maps -> (B, K, D) style vectors, offsets from the decoder's average latent."""
        return self.modulation_encoder(features) + self.latent_avg

    def structure(self, features: list[Tensor]) -> list[Tensor] | None:
        """The content's spatial structure codes from its maps F1 (``config.structure_channels`` > 0, a departure), one
        per scale of ``config.structure_scales``, D's width at the map's resolution r: (B, C_r, r, r) each; None for
        the paper's model."""
        if self.structure_codes is None:
            return None
        return [code(features[scale]) for code, scale in zip(self.structure_codes, self.config.structure_scales)]

    def decode(self, latents: Tensor, generator: torch.Generator | list[torch.Generator] | None = None,
               structure: list[Tensor] | None = None) -> Tensor:
        """D: (B, K, D) -> (B, 3, S, S), with the content's ``structure`` codes (:meth:`structure`) when the model
        has them. Noise per ``config.noise_mode``; ``generator`` seeds random noise.

        A list of B generators draws each sample's noise from its own generator (as in diffusers), so a
        seeded sample does not depend on the rest of its batch.
        """
        noise = None
        if self.config.noise_mode == "random":
            if isinstance(generator, (list, tuple)):
                if len(generator) != latents.shape[0]:
                    raise ValueError(f"generator: got {len(generator)} generators for a batch of {latents.shape[0]}")
                per_sample = [self.decoder.make_noise(1, generator=g, device=latents.device) for g in generator]
                noise = [torch.cat(maps) for maps in zip(*per_sample)]
            else:
                noise = self.decoder.make_noise(latents.shape[0], generator=generator, device=latents.device)
            noise = [z.to(latents.dtype) for z in noise]
        return self.decoder(latents, noise, structure)

    def forward(
        self,
        content_pixel_values: Tensor,
        style_pixel_values: Tensor,
        n: int | None = None,
        output_correspondence: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        use_alignment: bool | None = None,
        alignment: str | None = None,
    ) -> COATOutput | tuple:
        """Transfer the style image's appearance onto the content image.

        Args:
            content_pixel_values: I1, (B, 3, S, S) in [-1, 1].
            style_pixel_values: I2, same shape.
            n: content modulation layers (0..K, default ``config.default_n``); n = K ignores the style.
            output_correspondence: also return the per-scale matches.
            generator: seeds the decoder's noise inputs (reproducible calls); a list gives one per sample.
            use_alignment: override ``config.use_alignment`` (False = latent-swapping baseline).
            alignment: the alignment rule, ``"mutual"`` (Eq. 3), ``"nearest"`` or ``"soft"`` (default
                ``config.alignment``).
        """
        self._check_pixel_values(content_pixel_values, "content_pixel_values")
        self._check_pixel_values(style_pixel_values, "style_pixel_values")
        if content_pixel_values.shape[0] != style_pixel_values.shape[0]:
            raise ValueError("content_pixel_values and style_pixel_values need the same batch size")
        n = self._check_n(n)
        alignment = self._check_alignment(alignment)
        use_alignment = self.config.use_alignment if use_alignment is None else use_alignment

        content_features = self.encoder(content_pixel_values)
        style_features = self.encoder(style_pixel_values)
        correspondences = None
        if use_alignment or output_correspondence:
            aligned, correspondences = self.align(
                content_features, style_features, alignment, output_correspondence,
                self.matching_maps(content_pixel_values, content_features),
                self.matching_maps(style_pixel_values, style_features))
            if use_alignment:
                style_features = aligned
        content_latents = self.style_vectors(content_features)  # (B, K, D)
        style_latents = self.style_vectors(style_features)  # (B, K, D)
        latents = mix_latents(content_latents, style_latents, n)
        images = self.decode(latents, generator, self.structure(content_features))  # (B, 3, S, S)

        output = COATOutput(
            images=images,
            latents=latents,
            content_latents=content_latents,
            style_latents=style_latents,
            correspondences=tuple(correspondences) if output_correspondence else None,
        )
        return output if return_dict else output.to_tuple()
