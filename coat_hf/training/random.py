"""Counter-based random streams: per-sample draws made on the device, without generators or host syncs.

Every random quantity of a training sample (its n, its decoder noise, its L_CCL positions, its
pseudo-exemplar augmentation) is a pure function of ``(key, stream, counter)``: the sample's 32-bit
``key`` (from the data schedule), a stream id naming the quantity, and the element's index. A 32-bit
integer hash (Chris Wellons' ``lowbias32``) maps them to uniform bits, so a sample draws the same
numbers whatever its batch, process or device, and a whole batch draws in a few fused tensor ops on the
accelerator. The hash is computed in int64 arithmetic masked to 32 bits, exact on every backend.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF


def hash32(x: Tensor) -> Tensor:
    """``lowbias32`` of int64 values in [0, 2^32): a bijection with good avalanche, same shape and dtype."""
    x = x & _MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def sample_keys(seed: int, positions: Tensor) -> Tensor:
    """32-bit keys of the samples at global stream ``positions`` (int64, any shape) of a run seeded ``seed``."""
    lo, hi = positions & _MASK, positions >> 32
    return hash32(hash32(lo ^ hash32(torch.full_like(positions, seed & _MASK))) + hi)


def _host_hash32(x: int) -> int:
    """``hash32`` of one Python integer, on the host: a stream's constant then costs no device operation."""
    x &= _MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


Streams = int | Tensor
"""One stream id, or an int64 tensor of S stream ids on the keys' device: the draws of several streams in one pass
(fewer, larger kernels: a GPU step is bound by their launches), equal to separate draws stream by stream."""


def random_bits(keys: Tensor, stream: Streams, count: int) -> Tensor:
    """Uniform 32-bit values (int64) of ``stream`` for the samples' (B,) ``keys``: (B, count) for one stream,
    (B, *stream.shape, count) for a tensor of streams."""
    if isinstance(stream, int):
        stream_keys = hash32(keys ^ _host_hash32(stream))  # (B,)
    else:
        stream_keys = hash32(keys.view(-1, *(1,) * stream.ndim) ^ hash32(stream))  # (B, *S)
    counter = torch.arange(count, device=keys.device, dtype=torch.int64)
    return hash32(stream_keys[..., None] ^ hash32(counter + 0x632BE5AB))


def uniform(keys: Tensor, stream: Streams, count: int) -> Tensor:
    """Float32 uniform in (0, 1), shaped as :func:`random_bits`: 24 random bits, centred in their bins (never 0
    or 1)."""
    return ((random_bits(keys, stream, count) >> 8).float() + 0.5) * 2.0**-24


def normal(keys: Tensor, stream: Streams, count: int) -> Tensor:
    """Float32 standard normal draws, shaped as :func:`random_bits` (Box–Muller on the uniform streams ``stream``
    and ``stream + 0x10000``, drawn together)."""
    if isinstance(stream, Tensor):
        pair = torch.stack([stream, stream + 0x10000])  # (2, *S)
    else:  # made on the device: a tensor from host values would be one more copy per call
        pair = torch.arange(2, device=keys.device, dtype=torch.int64) * 0x10000 + stream  # (2,)
    u1, u2 = uniform(keys, pair, count).unbind(1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def randint(keys: Tensor, stream: int, low: int, high: int) -> Tensor:
    """(B,) int64 uniform in [low, high) per sample."""
    return low + (uniform(keys, stream, 1)[:, 0] * (high - low)).long().clamp_max(high - low - 1)
