"""Eq. 1's row and column maxima without writing S: one Triton kernel for CUDA devices.

The blocked search (:mod:`coat_hf.correspondence`) writes each block of S = F1ᵀF2 to memory and reads it back for
its row and column maxima. At the 128 px model's 64x64 scale, S holds 16.8M values per image: in the compiled
training step on an H100 the search took about 12 ms of 91 (``benchmarks/results/
profile_training_NVIDIA-H100-80GB-HBM3_b128_compiled_batched.txt``), bound by that memory traffic. Here each program
takes one image and ``BLOCK_M`` content rows, computes S tile by tile in registers (``BLOCK_N`` style positions at a
time, the channels in ``BLOCK_C`` slices, float32 accumulation) and keeps only the rows' running maxima and first
arg-maxima and, per tile, the columns' maxima over its rows; those partial column maxima, (B, N1 / BLOCK_M, N2), are
reduced afterwards. Ties go to the first index within a tile and between row tiles, as ``torch.max`` does on CPUs.

``COATConfig.alignment_kernel = "fused"`` (the default) selects it for CUDA tensors when Triton is installed;
everything else keeps the blocked search. The kernel is a ``torch.library.triton_op``, so a compiled step calls it as
it is. Measured on H100s (compiled objective, batch 128): 1,358 -> 1,640 images/s, the search 2.6 ms per call.
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

BLOCK_M, BLOCK_N = 64, 64
"""Content rows per program and style positions per tile."""


def available(tensor: Tensor) -> bool:
    """Whether the fused search can run on ``tensor`` (a CUDA tensor of 32 or 16 bits per value)."""
    return triton is not None and tensor.device.type == "cuda" and tensor.dtype in (
        torch.float32, torch.float16, torch.bfloat16)


def _launch(f1: Tensor, f2: Tensor, columns: bool, launcher: Callable) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One kernel launch (``launcher`` wraps the kernel: ``wrap_triton`` or nothing): f1 (B, N1, C), f2 (B, C, N2)
    -> row maxima and arg-maxima (B, N1) and, with ``columns``, each row tile's column maxima and arg-maxima
    (B, N1 / BLOCK_M, N2); float32 and int32."""
    b, n1, channels = f1.shape
    n2 = f2.shape[2]
    tiles = triton.cdiv(n1, BLOCK_M)
    f2 = f2.to(f1.dtype)
    row_max = torch.empty(b, n1, dtype=torch.float32, device=f1.device)
    row_arg = torch.empty(b, n1, dtype=torch.int32, device=f1.device)
    partial = (b, tiles, n2) if columns else (1,)
    col_max = torch.empty(partial, dtype=torch.float32, device=f1.device)
    col_arg = torch.empty(partial, dtype=torch.int32, device=f1.device)
    block_c = min(64, max(16, triton.next_power_of_2(channels)))
    launcher(_maxima_kernel)[(b, tiles)](
        f1, f2, row_max, row_arg, col_max, col_arg, n1, n2, channels, *f1.stride(), *f2.stride(),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=block_c, IEEE=f1.dtype == torch.float32, COLUMNS=columns)
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
    def _maxima_kernel(f1, f2, row_max, row_arg, col_max, col_arg, n1, n2, channels,
                       s1b, s1n, s1c, s2b, s2c, s2n,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, IEEE: tl.constexpr,
                       COLUMNS: tl.constexpr):
        image, tile = tl.program_id(0), tl.program_id(1)
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n1
        best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        best_arg = tl.zeros((BLOCK_M,), tl.int32)
        for start in range(0, n2, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < n2
            s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for c0 in range(0, channels, BLOCK_C):
                chans = c0 + tl.arange(0, BLOCK_C)
                chan_ok = chans < channels
                a = tl.load(f1 + image * s1b + rows[:, None] * s1n + chans[None, :] * s1c,
                            mask=row_ok[:, None] & chan_ok[None, :], other=0.0)
                b = tl.load(f2 + image * s2b + chans[:, None] * s2c + cols[None, :] * s2n,
                            mask=chan_ok[:, None] & col_ok[None, :], other=0.0)
                if IEEE:
                    s += tl.dot(a, b, input_precision="ieee")
                else:
                    s += tl.dot(a, b)
            s = tl.where(col_ok[None, :], s, float("-inf"))
            tile_max, tile_arg = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_max > best  # strict: an earlier tile keeps its tie
            best_arg = tl.where(better, tile_arg + start, best_arg)
            best = tl.where(better, tile_max, best)
            if COLUMNS:
                s = tl.where(row_ok[:, None], s, float("-inf"))
                top, top_arg = tl.max(s, axis=0, return_indices=True, return_indices_tie_break_left=True)
                at = (image * tl.num_programs(1) + tile) * n2 + cols
                tl.store(col_max + at, top, mask=col_ok)
                tl.store(col_arg + at, top_arg + tile * BLOCK_M, mask=col_ok)
        tl.store(row_max + image * n1 + rows, best, mask=row_ok)
        tl.store(row_arg + image * n1 + rows, best_arg, mask=row_ok)

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
