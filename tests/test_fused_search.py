"""The fused search kernel (``coat_hf.fused_search``): on CPUs through Triton's interpreter, on CUDA for real."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coat_hf import COATConfig, fused_search
from coat_hf.correspondence import _unit_maps, align_features, find_correspondence

triton = pytest.importorskip("triton")
without_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks for machines without a GPU (the "
                                 "interpreter, compiling for sm_90): with one, the CUDA tests run the real kernel")

_INTERPRETED = """
import torch
from coat_hf.correspondence import _blocked_pass, _unit_maps
from coat_hf.fused_search import LAUNCH, _launch, _reduce, search_maxima
torch.manual_seed(3)
for b, c, (h1, w1), (h2, w2) in [(2, 40, (10, 10), (9, 10)), (1, 130, (8, 9), (12, 11))]:  # ragged tiles
    content, style = torch.randn(b, c, h1, w1), torch.randn(b, c, h2, w2)
    style[:, :, 1] = style[:, :, 4]  # a duplicated style row: exact ties
    if h2 * w2 > 128:  # ties across tiles: the same lane of the next tile, another lane, the next row tile
        style.view(b, c, -1)[:, :, 67] = style.view(b, c, -1)[:, :, 3]
        style.view(b, c, -1)[:, :, 100] = style.view(b, c, -1)[:, :, 5]
        content.view(b, c, -1)[:, :, 66] = content.view(b, c, -1)[:, :, 2]
    f1, f2 = _unit_maps(content, style)
    expected = _blocked_pass(f1, f2, 1024, None, style, None)[:4]
    fused = search_maxima(f1, f2, interpret=True)
    rows_only = search_maxima(f1, f2, columns=False, interpret=True)
    for name, got, want in zip(("row_max", "row_arg", "col_max", "col_arg"), fused, expected):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        if name.endswith("arg"):
            assert torch.equal(got, want), name
        else:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(rows_only[1], expected[1]) and rows_only[2].numel() == 0
    for launch in ({**LAUNCH, "LANES": True}, {**LAUNCH, "LANES": True, "BLOCK_N": 32, "MAX_BLOCK_C": 16}):
        found = _reduce(*_launch(f1, f2, True, lambda kernel: kernel, launch), True, f1.dtype)  # other candidates
        assert all(torch.equal(found[i], expected[i]) for i in (1, 3)), launch
print("ok")
"""


@without_gpu
def test_the_kernel_finds_the_blocked_search_maxima():
    """Run by Triton's interpreter on the CPU: the same row and column arg-maxima as the blocked pass, ties
    included, for sizes that leave ragged tiles (rows, columns and channels); the default launch and the per-lane
    row arg-max, with narrower tiles and channel slices."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_cpus_keep_the_blocked_search():
    torch.manual_seed(0)
    f1, f2 = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 7, 4)
    fused, blocked = find_correspondence(f1, f2, kernel="fused"), find_correspondence(f1, f2)
    assert torch.equal(fused.nearest, blocked.nearest) and torch.equal(fused.mutual, blocked.mutual)


def test_unknown_kernels_are_refused():
    with pytest.raises(ValueError, match="alignment_kernel must be one of"):
        COATConfig.preset("tiny", alignment_kernel="flash")
    with pytest.raises(ValueError, match="kernel must be one of"):
        find_correspondence(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), kernel="flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_fused_search_equals_the_blocked_search(dtype):
    """On the GPU, eager and inside a compiled function (one graph): the blocked search's matches (float32: IEEE
    products; bfloat16: both within bfloat16's rounding of the best match, which the fused kernel keeps in
    float32)."""
    torch.manual_seed(12)
    f1 = torch.randn(4, 48, 64, 64, device="cuda", dtype=dtype)
    f2 = torch.randn(4, 48, 64, 64, device="cuda", dtype=dtype)
    for rule in ("mutual", "nearest"):
        blocked_aligned, blocked = align_features(f1, f2, 1024, rule=rule)
        fused_aligned, fused = align_features(f1, f2, 1024, rule=rule, kernel="fused")
        def fused_nearest(a, b):
            return align_features(a, b, 1024, rule=rule, kernel="fused")[1].nearest

        explanation = torch._dynamo.explain(fused_nearest)(f1, f2)
        assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
        compiled = torch.compile(fused_nearest)
        if dtype == torch.float32:
            assert torch.equal(fused.nearest, blocked.nearest)
        else:  # the blocked products come out rounded to bfloat16 (many ties), the fused ones stay float32
            similarity = torch.bmm(*_unit_maps(f1.float(), f2.float()))  # Eq. 1 in float32, (B, N1, N2)
            best = similarity.amax(-1)
            for found in (fused, blocked):
                assert (best - similarity.gather(-1, found.nearest[..., None])[..., 0]).max() < 1e-2
        assert torch.equal(compiled(f1, f2), fused.nearest)
        if dtype == torch.float32:
            assert torch.equal(fused.mutual, blocked.mutual)
            torch.testing.assert_close(fused_aligned, blocked_aligned)


_OBJECTIVE = """
import torch
from coat_hf import COATConfig, COATModel, fused_search
from coat_hf.training.objective import COATTrainingObjective, ObjectiveConfig
from coat_hf.training.random import sample_keys
from coat_hf.correspondence import find_correspondence
from torch.utils.flop_counter import FlopCounterMode
fused_search.available = lambda tensor: True  # CPU tensors through Triton's interpreter
torch.manual_seed(0)
content, style = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
losses = {}
for kernel in ("blocked", "fused"):
    torch.manual_seed(1)
    model = COATModel(COATConfig.preset("tiny", alignment="nearest", modulation_pyramid=True, alignment_kernel=kernel))
    objective = COATTrainingObjective(model, ObjectiveConfig(lambda_lpips=0, transfer_weight=1.0,
                                                             train_alignment="mutual", batch_branches=True))
    out = objective(content, style, sample_keys(0, torch.arange(2)), None)
    losses[kernel] = {name: out[name].item() for name in ("loss", "rec", "ccl", "transfer")}
for name, value in losses["blocked"].items():
    assert abs(losses["fused"][name] - value) <= 1e-5 * max(1.0, abs(value)), (name, losses)
flops = {}
for kernel in ("blocked", "fused"):  # the FLOP counter (benchmarks' TFLOP/s) counts S's products either way
    with FlopCounterMode(display=False) as counter:
        find_correspondence(content, style, kernel=kernel)
    flops[kernel] = counter.get_total_flops()
assert flops["fused"] == flops["blocked"] >= 2 * 2 * 64 ** 2 * 64 ** 2 * 3, flops
print("ok")
"""


@without_gpu
def test_the_objective_with_the_fused_search_has_the_same_losses():
    """The training objective with ``alignment_kernel="fused"`` (the kernel interpreted on the CPU; whether it stays
    one graph for ``torch.compile`` needs a real kernel: the CUDA test): the blocked search's losses; the FLOP
    counter counts the same products for both searches."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _OBJECTIVE], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _search_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_search.py"
    spec = importlib.util.spec_from_file_location("benchmark_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@without_gpu
@pytest.mark.skipif(not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists(),
                    reason="needs Triton's NVIDIA backend tools")
def test_the_kernel_compiles_for_an_h100_without_spills():
    """Compiled for sm_90 without a GPU (``benchmarks/benchmark_search.py --registers``): the default launch in
    bfloat16, the content rows held in registers (48 channels, one slice) or sliced (96), keeps every value in
    registers; a 255-register candidate reports its spills."""
    benchmark = _search_benchmark()
    for channels in (48, 96):
        count, spilled = benchmark.registers(fused_search.LAUNCH, channels)
        assert 0 < count <= 255 and spilled == 0, (channels, count, spilled)
    heavy = {**fused_search.LAUNCH, "BLOCK_N": 128, "LANES": True, "num_warps": 4}
    assert benchmark.registers(heavy, 48)[1] > 0


@pytest.mark.parametrize("argument, message", [(["--block_n", "48"], "--block_n takes powers of two from 16"),
                                               (["--batch", "0"], "--batch must be at least 1")])
def test_the_search_benchmark_refuses_bad_settings(argument, message):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_search.py"
    done = subprocess.run([sys.executable, str(path), "--registers", *argument], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
