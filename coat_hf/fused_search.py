"""Eq. 1's row and column maxima without writing S: one Triton kernel for CUDA devices.

The blocked search (:mod:`coat_hf.correspondence`) writes each block of S = F1ᵀF2 to memory and reads it back for
its row and column maxima. At the 128 px model's 64x64 scale, S holds 16.8M values per image: in the compiled
training step on an H100 the search took about 12 ms of 91 (``benchmarks/results/
profile_training_NVIDIA-H100-80GB-HBM3_b128_compiled_batched.txt``), bound by that memory traffic. Here each program
takes one image and ``BLOCK_M`` content rows, computes S tile by tile in registers (``BLOCK_N`` style positions at a
time, the channels in ``BLOCK_C`` slices, float32 accumulation; with one slice the content rows are loaded once)
and keeps the rows' running maxima and first arg-maxima (each tile reduced, or with ``LANES`` each lane's best over
the tiles, elementwise work reduced across the lanes once at the end) and, per tile, the columns' maxima over its
rows; those partial column maxima, (B, N1 / BLOCK_M, N2), are reduced afterwards. Ties go to the first index, within
a tile, between tiles and between row tiles, as ``torch.max`` does on CPUs. ``LAUNCH`` holds the tiling and schedule.

``COATConfig.alignment_kernel = "fused"`` (the default) selects it for CUDA tensors when Triton is installed;
everything else keeps the blocked search. The kernel is a ``torch.library.triton_op``, so a compiled step calls it as
it is. Measured on H100s (compiled objective, batch 128) with ``LAUNCH``'s settings (the content rows then loaded
at every tile): 1,358 -> 1,640 images/s, its four calls 10.6 ms of a 72.9 ms step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
    from torch.utils.flop_counter import register_flop_formula
except ImportError:  # CPU-only installs: the blocked search serves
    triton = None

BLOCK_M = 64
"""Content rows per program."""

LAUNCH: dict[str, int | bool] = {"BLOCK_N": 64, "MAX_BLOCK_C": 64, "LANES": False, "num_warps": 4, "num_stages": 3}
"""The kernel's tiling and schedule: style positions per tile, the largest channel slice, the row arg-max kept per
lane (``LANES``) or reduced per tile, warps and pipeline stages. The measured default; ``benchmarks/
benchmark_search.py`` times the alternatives on a GPU."""


def available(tensor: Tensor) -> bool:
    """Whether the fused search can run on ``tensor`` (a CUDA tensor of 32 or 16 bits per value)."""
    return triton is not None and tensor.device.type == "cuda" and tensor.dtype in (
        torch.float32, torch.float16, torch.bfloat16)


def kernel_constants(channels: int, ieee: bool, columns: bool, launch: dict[str, int | bool] = LAUNCH
                     ) -> dict[str, int | bool]:
    """The kernel's compile-time constants for maps of ``channels`` channels: ``launch``'s tiling, the channel slice
    (a power of two from 16 to ``MAX_BLOCK_C``), whether one slice holds them all, IEEE float32 products."""
    block_c = min(launch["MAX_BLOCK_C"], max(16, triton.next_power_of_2(channels)))
    return {"BLOCK_M": BLOCK_M, "BLOCK_N": launch["BLOCK_N"], "BLOCK_C": block_c, "ONE_SLICE": channels <= block_c,
            "LANES": launch["LANES"], "IEEE": ieee, "COLUMNS": columns}


def _launch(f1: Tensor, f2: Tensor, columns: bool, launcher: Callable, launch: dict[str, int | bool] = LAUNCH
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One kernel launch (``launcher`` wraps the kernel: ``wrap_triton`` or nothing; ``launch``: see ``LAUNCH``):
    f1 (B, N1, C), f2 (B, C, N2) -> row maxima and arg-maxima (B, N1) and, with ``columns``, each row tile's column
    maxima and arg-maxima (B, N1 / BLOCK_M, N2); float32 and int32."""
    b, n1, channels = f1.shape
    n2 = f2.shape[2]
    tiles = triton.cdiv(n1, BLOCK_M)
    f2 = f2.to(f1.dtype)
    row_max = torch.empty(b, n1, dtype=torch.float32, device=f1.device)
    row_arg = torch.empty(b, n1, dtype=torch.int32, device=f1.device)
    partial = (b, tiles, n2) if columns else (1,)
    col_max = torch.empty(partial, dtype=torch.float32, device=f1.device)
    col_arg = torch.empty(partial, dtype=torch.int32, device=f1.device)
    launcher(_maxima_kernel)[(b, tiles)](
        f1, f2, row_max, row_arg, col_max, col_arg, n1, n2, channels, *f1.stride(), *f2.stride(),
        **kernel_constants(channels, f1.dtype == torch.float32, columns, launch),
        num_warps=launch["num_warps"], num_stages=launch["num_stages"])
    return row_max, row_arg, col_max, col_arg


def _reduce(row_max: Tensor, row_arg: Tensor, col_max: Tensor, col_arg: Tensor, columns: bool, dtype: torch.dtype
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``_launch``'s outputs as :func:`search_maxima` returns them: the row tiles' column maxima reduced."""
    if not columns:
        return row_max.to(dtype), row_arg.long(), row_max.new_empty(0, dtype=dtype), row_arg.new_empty(0).long()
    top, tile = col_max.max(dim=1)  # (B, N2): the best row tile of each column
    return (row_max.to(dtype), row_arg.long(), top.to(dtype),
            col_arg.gather(1, tile[:, None]).squeeze(1).long())


if triton is not None:

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        """a @ b, float32 accumulation; IEEE float32 products for float32 inputs."""
        if IEEE:
            product = tl.dot(a, b, input_precision="ieee")
        else:
            product = tl.dot(a, b)
        return product

    @triton.jit
    def _maxima_kernel(f1, f2, row_max, row_arg, col_max, col_arg, n1, n2, channels,
                       s1b, s1n, s1c, s2b, s2c, s2n,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, ONE_SLICE: tl.constexpr,
                       LANES: tl.constexpr, IEEE: tl.constexpr, COLUMNS: tl.constexpr):
        image, tile = tl.program_id(0), tl.program_id(1)
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        lanes = tl.arange(0, BLOCK_N)
        row_ok = rows < n1
        f1 += image * s1b + rows[:, None] * s1n
        f2 += image * s2b
        chans = tl.arange(0, BLOCK_C)
        if ONE_SLICE:  # channels <= BLOCK_C: the content rows stay in registers for every tile
            a = tl.load(f1 + chans[None, :] * s1c, mask=row_ok[:, None] & (chans < channels)[None, :], other=0.0)
        if LANES:  # each lane keeps its best over the tiles so far and that tile's start; reduced once at the end
            lane_max = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
            lane_start = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
        else:  # each tile reduced to its rows' maxima and first arg-maxima
            best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
            first = tl.zeros((BLOCK_M,), tl.int32)
        for start in range(0, n2, BLOCK_N):
            cols = start + lanes
            col_ok = cols < n2
            if ONE_SLICE:
                b = tl.load(f2 + chans[:, None] * s2c + cols[None, :] * s2n,
                            mask=(chans < channels)[:, None] & col_ok[None, :], other=0.0)
                s = _dot(a, b, IEEE)
            else:
                s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
                for c0 in range(0, channels, BLOCK_C):
                    chan_ok = c0 + chans < channels
                    a = tl.load(f1 + (c0 + chans)[None, :] * s1c, mask=row_ok[:, None] & chan_ok[None, :], other=0.0)
                    b = tl.load(f2 + (c0 + chans)[:, None] * s2c + cols[None, :] * s2n,
                                mask=chan_ok[:, None] & col_ok[None, :], other=0.0)
                    s += _dot(a, b, IEEE)
            s = tl.where(col_ok[None, :], s, float("-inf"))
            if LANES:
                better = s > lane_max  # strict: an earlier tile keeps its tie
                lane_max = tl.where(better, s, lane_max)
                lane_start = tl.where(better, start, lane_start)
            else:
                tile_max, tile_arg = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
                better = tile_max > best  # strict: an earlier tile keeps its tie
                first = tl.where(better, tile_arg + start, first)
                best = tl.where(better, tile_max, best)
            if COLUMNS:
                s = tl.where(row_ok[:, None], s, float("-inf"))
                top, top_arg = tl.max(s, axis=0, return_indices=True, return_indices_tie_break_left=True)
                at = (image * tl.num_programs(1) + tile) * n2 + cols
                tl.store(col_max + at, top, mask=col_ok)
                tl.store(col_arg + at, top_arg + tile * BLOCK_M, mask=col_ok)
        if LANES:
            best = tl.max(lane_max, axis=1)
            first = tl.min(tl.where(lane_max == best[:, None], lane_start + lanes[None, :], n2), axis=1)  # ties: first
        tl.store(row_max + image * n1 + rows, best, mask=row_ok)
        tl.store(row_arg + image * n1 + rows, first, mask=row_ok)

    @triton_op("coat_hf::search_maxima", mutates_args=())
    def _search_maxima_op(f1: Tensor, f2: Tensor, columns: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _reduce(*_launch(f1, f2, columns, wrap_triton), columns, torch.float32)

    @register_flop_formula(torch.ops.coat_hf.search_maxima)
    def _search_flops(f1_shape: torch.Size, f2_shape: torch.Size, *args, **kwargs) -> int:
        """S's products, 2·B·N1·N2·C, as ``torch.utils.flop_counter`` counts the blocked search's ``bmm``."""
        b, n1, channels = f1_shape
        return 2 * b * n1 * f2_shape[2] * channels


def search_maxima(f1: Tensor, f2: Tensor, columns: bool = True, interpret: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row maxima and first arg-maxima of S = f1 @ f2 for unit maps f1 (B, N1, C) and f2 (B, C, N2), and with
    ``columns`` the column maxima and their first arg-maxima: (B, N1), (B, N1) int64, (B, N2), (B, N2) int64 (the
    last two empty without ``columns``), values in f1's dtype. No graph: the matches are discrete.
    Under autocast the products take autocast's dtype (bf16 on tensor cores, float32 accumulation), as the blocked
    search's matrix products do; float32 inputs otherwise give IEEE float32 products. ``interpret`` launches the
    kernel directly (Triton's interpreter, ``TRITON_INTERPRET=1``, runs it on CPUs)."""
    if interpret:
        return _reduce(*_launch(f1, f2, columns, lambda kernel: kernel), columns, f1.dtype)
    dtype = f1.dtype
    if torch.is_autocast_enabled(f1.device.type):  # the products in autocast's precision, as the blocked search's
        dtype = torch.get_autocast_dtype(f1.device.type)
    with torch.no_grad():
        row_max, row_arg, col_max, col_arg = _search_maxima_op(f1.detach().to(dtype), f2.detach().to(dtype), columns)
    return row_max.to(f1.dtype), row_arg, col_max.to(f1.dtype), col_arg
