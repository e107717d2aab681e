"""COAT model configuration."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transformers import PretrainedConfig


_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests and CI: 64 px, runs in well under a second on a CPU.
    "tiny": dict(
        image_size=64, encoder_channels=[32, 64, 96], style_dim=64, decoder_channels=[96, 96, 64, 48, 32], default_n=5
    ),
    # Trainable on a 2-core CPU in hours: 128 px.
    "small": dict(
        image_size=128,
        encoder_channels=[48, 96, 160, 256],
        style_dim=192,
        decoder_channels=[256, 256, 192, 128, 64, 32],
        default_n=5,
    ),
    # The paper's scale: 256 px, 512-d styles, StyleGAN2 widths (channel multiplier 2).
    "paper-256": dict(
        image_size=256,
        encoder_channels=[64, 128, 256, 512],
        style_dim=512,
        decoder_channels=[512, 512, 512, 512, 512, 256, 128],
        default_n=6,
    ),
}


MAX_IMAGE_SIZE = 1024
"""Largest ``image_size`` (StyleGAN2's largest generators are 1024 px); more would allocate without bound."""

MAX_WIDTH = 4096
"""Largest channel count or style dimension (StyleGAN2 uses 512)."""

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or (isinstance(value, (list, tuple)) and len(value) > 0
                                           and all(check(v) for v in value))


_FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(("image_size", "in_channels", "style_dim", "alignment_block_size", "structure_channels"),
                    (_is_int, "an integer")),
    "default_n": (lambda value: value is None or _is_int(value), "an integer"),
    "structure_scale": (lambda value: _is_int(value) or _list_of(_is_int)(value), "an integer or a list of integers"),
    **dict.fromkeys(("encoder_channels", "decoder_channels", "style_scales"),
                    (_list_of(_is_int), "a non-empty list of integers")),
    "blur_kernel": (_list_of(_is_number), "a non-empty list of numbers"),
    "alignment_temperature": (_is_number, "a finite number"),
    **dict.fromkeys(("noise_mode", "alignment", "alignment_kernel", "match_features"),
                    (lambda value: isinstance(value, str), "a string")),
    **dict.fromkeys(("use_alignment", "modulation_pyramid"), (lambda value: isinstance(value, bool), "true or false")),
}
"""Each argument's type check and its description: a config.json may hold anything."""


def _check_types(values: dict[str, Any]) -> None:
    for name, (check, expected) in _FIELD_TYPES.items():
        if not check(values[name]):
            raise ValueError(f"{name} must be {expected}, got {values[name]!r}")


def _check_sizes(values: dict[str, Any]) -> None:
    """Sizes within sane limits, so that a config.json asking for absurd ones fails before allocating."""
    image_size = values["image_size"]
    if not 8 <= image_size <= MAX_IMAGE_SIZE or 2 ** int(math.log2(image_size)) != image_size:
        raise ValueError(f"image_size must be a power of two from 8 to {MAX_IMAGE_SIZE}, got {image_size}")
    if not 0 <= values["structure_channels"] <= MAX_WIDTH:
        raise ValueError(f"structure_channels must be from 0 (off) to {MAX_WIDTH}, got {values['structure_channels']}")
    widths = {"in_channels": [values["in_channels"]], "style_dim": [values["style_dim"]],
              "encoder_channels": values["encoder_channels"] or [], "decoder_channels": values["decoder_channels"] or []}
    for name, numbers in widths.items():
        if not all(1 <= n <= MAX_WIDTH for n in numbers):
            raise ValueError(f"{name} must be from 1 to {MAX_WIDTH}, got {values[name]}")
    resolutions = int(math.log2(image_size)) - 1  # 4, 8, ..., image_size
    if values["decoder_channels"] is not None and len(values["decoder_channels"]) != resolutions:
        raise ValueError(f"decoder_channels needs {resolutions} widths (resolutions 4 to {image_size}), got "
                         f"{len(values['decoder_channels'])}")
    if values["blur_kernel"] is not None and len(values["blur_kernel"]) > 16:
        raise ValueError(f"blur_kernel has {len(values['blur_kernel'])} taps; at most 16")
    if not 1 <= values["alignment_block_size"] <= 2**20:
        raise ValueError(f"alignment_block_size must be from 1 to {2**20}, got {values['alignment_block_size']}")


ALIGNMENT_RULES = ("mutual", "nearest", "soft")
"""The rules that build the aligned style map (see ``coat_hf.correspondence.align_features``)."""

ALIGNMENT_KERNELS = ("blocked", "fused")
"""How Eq. 1's maxima are found: blocks of S written and reduced, or one Triton kernel on CUDA devices that keeps
S in registers (``coat_hf.fused_search``; elsewhere the blocked search serves)."""

MATCH_FEATURES = ("encoder", "vgg16")
"""The maps Eq. 1 compares: E's own (the paper) or frozen VGG16's (see ``coat_hf.matching_features``)."""

VGG16_MAX_SCALES = 4
"""VGG16 has maps at E's strides 2, 4, 8 and 16 (relu2_2 to relu5_3): at most four encoder scales."""


def default_style_scales(num_latents: int, num_scales: int) -> list[int]:
    """Which feature scale feeds each modulation layer: coarse layers from the deepest map, fine from the shallowest.

    Layers are split into ``num_scales`` nearly equal consecutive groups; group 0 (the coarsest layers)
    reads scale L-1 (deepest), the last group reads scale 0 (shallowest), as pSp's feature pyramid does.
    """
    return [num_scales - 1 - (k * num_scales) // num_latents for k in range(num_latents)]


def stylegan2_channels(image_size: int, channel_multiplier: int = 2, max_channels: int = 512) -> list[int]:
    """StyleGAN2's decoder widths for resolutions 4, 8, ..., image_size (512 up to 32 px, then halving)."""
    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return [min(max_channels, widths[2**i] * (channel_multiplier if 2**i >= 64 else 1))
            for i in range(2, int(math.log2(image_size)) + 1)]


class COATConfig(PretrainedConfig):
    r"""Configuration of a :class:`~coat_hf.COATModel`.

    Args:
        image_size: side of the square images the model works at (a power of two).
        in_channels: image channels (3).
        encoder_channels: widths of E's L scales, shallow to deep; scale l (0-based) has size
            image_size / 2^(l+1). L = ``len(encoder_channels)``.
        style_dim: dimension D of the style vectors.
        decoder_channels: D's widths for resolutions 4, 8, ..., image_size (default: StyleGAN2's).
        blur_kernel: FIR taps of the up-sampling filters.
        style_scales: for each of the K modulation layers, the scale of E that feeds it (default:
            coarse layers from the deepest map, fine from the shallowest; see ``default_style_scales``).
        default_n: how many of the first modulation layers take the content's vectors when ``n`` is not
            given (small n = more of the style's appearance).
        use_alignment: build style vectors from aligned style maps (Eq. 3); False swaps raw latents
            (the latent-swapping baseline).
        alignment: the rule that builds the aligned style map: ``"mutual"`` (Eq. 3, the paper),
            ``"nearest"`` or ``"soft"`` (departures, see ``coat_hf.correspondence.align_features``).
        alignment_temperature: the softmax temperature of the ``"soft"`` rule.
        alignment_block_size: content positions per block in the blocked correspondence search.
        alignment_kernel: ``"fused"`` (one Triton kernel on CUDA devices, S never written: ``coat_hf.fused_search``;
            elsewhere the blocked search) or ``"blocked"`` (blocks of S in memory, every device). The same matches
            in float32; in bfloat16 the fused kernel keeps S in float32 where the blocked search rounds it.
        match_features: the maps Eq. 1-2 compare: ``"encoder"`` (E's own, the paper) or ``"vgg16"`` (frozen
            ImageNet VGG16 maps at E's strides, a departure that matches semantically from the first training
            step; see ``coat_hf.matching_features``). Eq. 3 moves E's features either way.
        modulation_pyramid: E_mod reads a top-down feature pyramid (pSp's GradualStyleEncoder) instead
            of one scale per layer (a departure from the paper, see ``ModulationEncoder``).
        noise_mode: "random" (fresh noise each call, seedable) or "const" (the stored noise maps).
        structure_channels: width of the content's spatial structure code added to D's features (a departure from
            the paper, see ``coat_hf.encoders.StructureCode``); 0, the paper, leaves D to start from its constant
            alone, so the content's layout reaches it only through the first n style vectors.
        structure_scale: the scale of E whose map gives the structure code, added to D's features of the same
            resolution (default: the deepest, L - 1), or a list of scales: one code of ``structure_channels`` per
            scale, each added at its own resolution (coarse layout and finer detail, ``structure_scales``).

    The training losses and their weights are not part of the architecture: they live in
    ``coat_hf.training.ObjectiveConfig``.
    """

    model_type = "coat"

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        encoder_channels: list[int] | None = None,
        style_dim: int = 64,
        decoder_channels: list[int] | None = None,
        blur_kernel: list[int] | None = None,
        style_scales: list[int] | None = None,
        default_n: int | None = None,
        use_alignment: bool = True,
        alignment: str = "mutual",
        alignment_temperature: float = 0.05,
        alignment_block_size: int = 1024,
        alignment_kernel: str = "fused",
        match_features: str = "encoder",
        modulation_pyramid: bool = False,
        noise_mode: str = "random",
        structure_channels: int = 0,
        structure_scale: int | list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        fields = {name: value for name, value in locals().items() if name in _FIELD_TYPES}  # the arguments
        _check_types(fields)
        _check_sizes(fields)
        self.image_size = image_size
        self.in_channels = in_channels
        self.encoder_channels = list(encoder_channels or [32, 64, 96])
        if 2 ** len(self.encoder_channels) > image_size:
            raise ValueError(f"{len(self.encoder_channels)} encoder scales do not fit a {image_size} px image")
        self.style_dim = style_dim
        self.decoder_channels = list(decoder_channels or stylegan2_channels(image_size))
        self.blur_kernel = list(blur_kernel or [1, 3, 3, 1])
        self.style_scales = list(style_scales or default_style_scales(self.num_modulation_layers, self.num_scales))
        if len(self.style_scales) != self.num_modulation_layers or not all(
            0 <= s < self.num_scales for s in self.style_scales
        ):
            raise ValueError(
                f"style_scales needs {self.num_modulation_layers} scale indices in [0, {self.num_scales})"
            )
        self.default_n = self.num_modulation_layers // 2 if default_n is None else default_n
        if not 0 <= self.default_n <= self.num_modulation_layers:
            raise ValueError(f"default_n must be in [0, {self.num_modulation_layers}], got {self.default_n}")
        self.use_alignment = use_alignment
        if alignment not in ALIGNMENT_RULES:
            raise ValueError(f"alignment must be one of {ALIGNMENT_RULES}, got {alignment!r}")
        if not alignment_temperature > 0:
            raise ValueError(f"alignment_temperature must be > 0, got {alignment_temperature}")
        self.alignment, self.alignment_temperature = alignment, alignment_temperature
        self.alignment_block_size = alignment_block_size
        if alignment_kernel not in ALIGNMENT_KERNELS:
            raise ValueError(f"alignment_kernel must be one of {ALIGNMENT_KERNELS}, got {alignment_kernel!r}")
        self.alignment_kernel = alignment_kernel
        if match_features not in MATCH_FEATURES:
            raise ValueError(f"match_features must be one of {MATCH_FEATURES}, got {match_features!r}")
        if match_features == "vgg16" and self.num_scales > VGG16_MAX_SCALES:
            raise ValueError(f"match_features 'vgg16' covers at most {VGG16_MAX_SCALES} encoder scales (strides 2 to "
                             f"16), got {self.num_scales}")
        self.match_features = match_features
        self.modulation_pyramid = modulation_pyramid
        if noise_mode not in ("random", "const"):
            raise ValueError(f"noise_mode must be 'random' or 'const', got {noise_mode!r}")
        self.noise_mode = noise_mode
        self.structure_channels = structure_channels
        if structure_scale is None:
            structure_scale = self.num_scales - 1
        self.structure_scale = structure_scale if _is_int(structure_scale) else list(structure_scale)
        scales = self.structure_scales
        if len(set(scales)) != len(scales) or not all(
            0 <= l < self.num_scales and self.feature_sizes[l] >= 4 for l in scales
        ):
            raise ValueError(f"structure_scale must be distinct scales of E in [0, {self.num_scales}) with maps of at "
                             f"least 4x4, got {structure_scale}")
        super().__init__(**kwargs)

    @property
    def num_scales(self) -> int:
        """L, the number of feature scales of E."""
        return len(self.encoder_channels)

    @property
    def num_modulation_layers(self) -> int:
        """K = 2·log2(image_size) − 2, the style vectors D consumes; n ranges over 0..K."""
        return 2 * int(math.log2(self.image_size)) - 2

    @property
    def structure_scales(self) -> list[int]:
        """The scales of E whose maps give the structure codes (``structure_scale`` as a list)."""
        scale = self.structure_scale
        return [scale] if _is_int(scale) else list(scale)

    @property
    def feature_strides(self) -> list[int]:
        """Stride of each scale's feature map: 2^(l+1)."""
        return [2 ** (l + 1) for l in range(self.num_scales)]

    @property
    def feature_sizes(self) -> list[int]:
        """Side of each scale's feature map."""
        return [self.image_size // stride for stride in self.feature_strides]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "COATConfig":
        """A named preset: ``"tiny"`` (tests, 64 px), ``"small"`` (CPU training, 128 px) or ``"paper-256"``."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(_PRESETS)
