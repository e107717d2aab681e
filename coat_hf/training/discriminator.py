"""StyleGAN2's residual discriminator and its losses (non-saturating logistic, lazy R1), for the optional
adversarial term that sharpens COAT's outputs when the decoder is trained from scratch.

Layout and names follow rosinality's ``stylegan2-pytorch`` (``convs``, ``final_conv``, ``final_linear``),
built from the decoder's own equalised-learning-rate layers in :mod:`coat_hf.stylegan2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configuration_coat import stylegan2_channels
from ..stylegan2 import Blur, EqualLinear, FusedLeakyReLU


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate: weights ~ N(0, 1), scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """[Blur + stride-2] EqualConv2d [+ FusedLeakyReLU]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[int] = (1, 3, 3, 1), bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = len(blur_kernel) - 2 + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
        stride, padding = (2, 0) if downsample else (1, kernel_size // 2)
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride, padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second halving the size) plus a 1x1 down-sampled skip, scaled by 1/sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, blur_kernel: Sequence[int] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, blur_kernel=blur_kernel, bias=False,
                              activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2 discriminator: (B, 3, S, S) -> (B, 1) realness logits.

    Args:
        size: image side S (a power of two >= 8).
        max_channels: cap on the widths (StyleGAN2 uses 512; smaller keeps CPU training practical).
        stddev_group: minibatch standard-deviation group size.
    """

    def __init__(self, size: int, max_channels: int = 512, stddev_group: int = 4) -> None:
        super().__init__()
        widths = stylegan2_channels(size, channel_multiplier=1, max_channels=max_channels)[::-1]  # S, ..., 4
        self.convs = nn.Sequential(ConvLayer(3, widths[0], 1),
                                   *(ResBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.stddev_group = stddev_group
        self.final_conv = ConvLayer(widths[-1] + 1, widths[-1], 3)
        self.final_linear = nn.Sequential(EqualLinear(widths[-1] * 16, widths[-1], activation=True),
                                          EqualLinear(widths[-1], 1))

    def minibatch_stddev(self, x: Tensor) -> Tensor:
        """Append one channel: the std over groups of samples, averaged over features and positions."""
        b, c, h, w = x.shape
        group = min(b, self.stddev_group)
        while b % group:
            group -= 1
        y = x.view(group, -1, 1, c, h, w)
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(2, 3, 4), keepdim=True).squeeze(2)  # (B/g, 1, 1, 1)
        return torch.cat([x, y.repeat(group, 1, h, w)], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.convs(images)  # (B, C, 4, 4)
        x = self.final_conv(self.minibatch_stddev(x))
        return self.final_linear(x.flatten(1))


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating logistic loss of the generator: softplus(−D(fake))."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic loss of the discriminator: softplus(−D(real)) + softplus(D(fake))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1: the squared gradient norm of D at real images, mean over the batch (real_images needs grad)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


@dataclass
class Adversary:
    """A prepared StyleGAN2 discriminator (``discriminator``, DDP-wrapped on several processes), its
    optimiser, and the bare module (``plain``) that scores the generator's outputs without syncing D."""

    discriminator: nn.Module
    optimizer: torch.optim.Optimizer
    plain: Discriminator

    def generator_loss(self, fake: Tensor) -> Tensor:
        """Non-saturating loss of the outputs; D's weights are left out of this graph."""
        self.plain.requires_grad_(False)
        logits = self.plain(fake)
        self.plain.requires_grad_(True)
        return generator_adversarial_loss(logits)

    def step(self, accelerator, real: Tensor, fake: Tensor, r1_weight: float) -> dict[str, Tensor]:
        """One D update on real content vs detached outputs, plus a lazy R1 term when ``r1_weight`` > 0."""
        real = real.detach().requires_grad_(r1_weight > 0)
        real_logits = self.discriminator(real)
        loss = discriminator_loss(real_logits, self.discriminator(fake))
        logs = {"adv_d": loss.detach()}
        if r1_weight > 0:
            r1 = r1_penalty(real_logits, real)
            loss = loss + r1_weight / 2 * r1
            logs["r1"] = r1.detach()
        accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logs
