"""StyleGAN2 synthesis network: the COAT decoder D.

Pure PyTorch (no compiled CUDA ops), written from the StyleGAN2 paper (Karras et al., 2020):
equalised learning rate, weight (de)modulation, noise inputs and ToRGB skip connections.
Parameter and buffer names follow the widely used layout of rosinality's ``stylegan2-pytorch``
generator (``input.input``, ``conv1``, ``to_rgb1``, ``convs.{i}``, ``to_rgbs.{i}``,
``noises.noise_{i}``), so that pretrained generators import by name (see
``coat_hf.convert_stylegan2``). The mapping network is not part of D: COAT's modulation encoder
produces the per-layer style vectors directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_kernel(taps: Sequence[float]) -> Tensor:
    """Separable FIR kernel (outer product of ``taps``), normalised to sum to 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None] if k.ndim == 1 else k
    return k / k.sum()


def upfirdn2d(x: Tensor, taps: Sequence[float], up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0),
              gain: float = 1.0) -> Tensor:
    """Upsample by zero insertion, pad, filter, downsample: NVIDIA's ``upfirdn2d`` reference op with the
    separable kernel ``make_kernel(taps) * gain`` (a true convolution).

    x: (B, C, H, W). The filter runs one axis at a time as a weighted sum of shifted views, the taps as
    constants: elementwise work that ``torch.compile`` fuses with its neighbours, where a depthwise convolution
    (cuDNN's grouped direct kernel and its data gradient) took 23% of a compiled training step on an H100.
    """
    scale = math.sqrt(gain) / sum(taps)  # per axis: the two axes' product is the kernel's gain
    weights = [t * scale for t in reversed(taps)]  # reversed: a true convolution
    return _upfirdn1d(_upfirdn1d(x, weights, up, down, pad, dim=3), weights, up, down, pad, dim=2)


def _upfirdn1d(x: Tensor, weights: list[float], up: int, down: int, pad: tuple[int, int], dim: int) -> Tensor:
    """:func:`upfirdn2d` along one axis ``dim`` of x (B, C, H, W), as a correlation with ``weights``."""
    if up > 1:  # each sample followed by up - 1 zeros
        x = torch.stack([x, *[torch.zeros_like(x)] * (up - 1)], dim=dim + 1).flatten(dim, dim + 1)
    x = F.pad(x, pad if dim == 3 else (0, 0, *pad))  # negative padding crops
    length = x.shape[dim] - len(weights) + 1
    out = sum(w * x.narrow(dim, k, length) for k, w in enumerate(weights))
    return out[(slice(None),) * dim + (slice(None, None, down),)] if down > 1 else out


def fused_leaky_relu(x: Tensor, bias: Tensor, negative_slope: float = 0.2, scale: float = math.sqrt(2)) -> Tensor:
    """Bias, leaky ReLU and a gain of sqrt(2) that keeps the activations' variance."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Leaky ReLU with a learned per-channel bias (``bias``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """Low-pass FIR filter applied after a transposed convolution (anti-aliasing).

    The 2-D filter ``make_kernel(taps) * upsample_factor**2`` is kept as the buffer ``kernel`` under
    rosinality's name, so state dicts and imported generators line up (the importer checks an imported filter
    equals it); ``forward`` applies the same filter from ``taps``, as constants.
    """

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.taps = tuple(taps)
        self.upsample_factor = upsample_factor
        self.register_buffer("kernel", self._make())
        self.pad = pad

    def _make(self) -> Tensor:
        return make_kernel(self.taps) * self.upsample_factor**2

    def reset_parameters(self) -> None:
        self.kernel.copy_(self._make())

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.taps, pad=self.pad, gain=self.upsample_factor**2)


class Upsample(Blur):
    """2x FIR upsampling of the RGB skip path."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        p = len(taps) - factor
        super().__init__(taps, pad=((p + 1) // 2 + factor - 1, p // 2), upsample_factor=factor)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.taps, up=self.upsample_factor, pad=self.pad, gain=self.upsample_factor**2)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights ~ N(0, 1/lr_mul), scaled at run time."""

    def __init__(
        self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.bias_init, self.lr_mul, self.activation = bias_init, lr_mul, activation
        self.scale = lr_mul / math.sqrt(in_dim)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=1.0 / self.lr_mul)
        if self.bias is not None:
            nn.init.constant_(self.bias, self.bias_init)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return out if bias is None else fused_leaky_relu(out, bias)
        return F.linear(x, self.weight * self.scale, bias)


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per input channel by a style vector (StyleGAN2 Eq. 1)
    and, optionally, demodulated to unit output variance (Eq. 3). ``upsample`` makes it a
    stride-2 transposed convolution followed by a blur."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, demodulate: bool = True,
        upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        # x: (B, Cin, H, W); style: (B, style_dim) -> (B, Cout, H', W')
        # Modulation and demodulation scale the activations instead of the weights (StyleGAN2-ADA's
        # non-fused path): one convolution with the shared weight for the whole batch, equal to the
        # per-sample weights of StyleGAN2 Eq. 1-3 and far faster than a grouped convolution.
        s = self.modulation(style)  # (B, Cin)
        weight = self.scale * self.weight[0]  # (Cout, Cin, k, k)
        x = x * s[:, :, None, None].to(x.dtype)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # sigma_j = sqrt(sum_{i,k} (w_ijk s_i)^2): (B, Cout)
            demod = torch.rsqrt((s.square() @ weight.square().sum(dim=(2, 3)).t()) + 1e-8)
            out = out * demod[:, :, None, None].to(out.dtype)
        return out


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by a learned strength (``weight``, starts at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis starts from."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.input)

    def forward(self, batch_size: int) -> Tensor:
        return self.input.expand(batch_size, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv, noise, bias and leaky ReLU: one StyleGAN2 synthesis layer."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation), added to the upsampled RGB skip."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class NoiseBuffers(nn.Module):
    """The generator's fixed noise maps, ``noise_{i}`` of shape (1, 1, r, r) (used with ``noise_mode="const"``)."""

    def __init__(self, resolutions: Sequence[int]) -> None:
        super().__init__()
        self.resolutions = list(resolutions)
        for i, r in enumerate(self.resolutions):
            self.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))

    def reset_parameters(self) -> None:
        for i in range(len(self.resolutions)):
            nn.init.normal_(getattr(self, f"noise_{i}"))

    def __getitem__(self, i: int) -> Tensor:
        return getattr(self, f"noise_{i}")


class StyleGAN2Synthesis(nn.Module):
    """Synthesis network D: learned constant -> StyledConv pairs per resolution -> RGB via ToRGB skips.

    Consumes ``num_latents = 2·log2(size) − 2`` style vectors, the modulation layers of COAT:
    vector 0 drives the 4x4 conv, vector 2k−1 / 2k the up-conv / conv of resolution 2^(k+2), and
    each ToRGB shares the vector of the layer after it (as in StyleGAN2).
    """

    def __init__(self, size: int, style_dim: int, channels: Sequence[int],
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if 2**log_size != size or size < 8:
            raise ValueError(f"image_size must be a power of two >= 8, got {size}")
        if len(channels) != log_size - 1:
            raise ValueError(
                f"decoder_channels needs one width per resolution 4..{size} ({log_size - 1} values), got {len(channels)}"
            )
        self.size, self.style_dim = size, style_dim
        self.num_latents = log_size * 2 - 2
        self.input = ConstantInput(channels[0])
        self.conv1 = StyledConv(channels[0], channels[0], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(channels[0], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for in_ch, out_ch in zip(channels[:-1], channels[1:]):
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
        self.noises = NoiseBuffers([2 ** ((i + 5) // 2) for i in range(self.num_latents - 1)])

    def make_noise(self, batch_size: int, generator: torch.Generator | None = None,
                   device: torch.device | None = None) -> list[Tensor]:
        """Fresh Gaussian noise maps for every StyledConv, (B, 1, r, r) each."""
        device = device or self.input.input.device
        return [
            torch.randn(batch_size, 1, r, r, generator=generator, device=generator.device if generator else device).to(device)
            for r in self.noises.resolutions
        ]

    def forward(self, latents: Tensor, noise: Sequence[Tensor] | None = None,
                structure: Sequence[Tensor] | None = None) -> Tensor:
        # latents: (B, num_latents, style_dim) -> images (B, 3, size, size), roughly in [-1, 1]
        # structure: optional maps (B, C_r, r, r), each added to the features of its resolution r after their convs
        if latents.ndim != 3 or latents.shape[1:] != (self.num_latents, self.style_dim):
            raise ValueError(
                f"latents must be (B, {self.num_latents}, {self.style_dim}), got {tuple(latents.shape)}"
            )
        if noise is None:
            noise = [self.noises[i] for i in range(len(self.noises.resolutions))]

        by_resolution = {code.shape[-1]: code for code in structure or ()}

        def add_structure(out: Tensor) -> Tensor:
            code = by_resolution.get(out.shape[-1])
            return out if code is None else out + code

        out = self.input(latents.shape[0])
        out = add_structure(self.conv1(out, latents[:, 0], noise[0]))
        skip = self.to_rgb1(out, latents[:, 1])
        i = 1
        for up_conv, conv, to_rgb in zip(self.convs[::2], self.convs[1::2], self.to_rgbs):
            out = up_conv(out, latents[:, i], noise[i])
            out = add_structure(conv(out, latents[:, i + 1], noise[i + 1]))
            skip = to_rgb(out, latents[:, i + 2], skip)
            i += 2
        return skip
