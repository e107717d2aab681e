"""The fused search kernel's tiling and schedule (``coat_hf.fused_search.LAUNCH``) against the alternatives.

    python benchmarks/benchmark_search.py --registers      # any machine with Triton: registers per thread, sm_90
    python benchmarks/benchmark_search.py --batch 256      # a CUDA device: milliseconds per call

The maps are the training step's: the ``--preset`` model's encoder scales (channels and sizes from E on one image),
``--batch`` images (the compiled face recipe aligns both styles of a 128-image batch at once: 256), unit vectors
multiplied in bfloat16 as under autocast, column maxima included (the mutual rule). Candidates: every combination of
``--block_n``, ``--max_block_c``, ``--lanes``, ``--warps`` and ``--stages``, the default first.

``--registers`` compiles each candidate for sm_90 with Triton's bundled ptxas (no GPU needed) and reports the
registers and spilled bytes per thread (``cuobjdump -res-usage``): 255 registers or a spill mean fewer resident
warps. On CUDA each candidate is timed at every scale (median of ``--repeats`` calls after a warm-up), its
arg-maxima compared with the default's (float32 sums in another order may break a near-tie otherwise), the blocked
search timed beside them; rows appended to ``--out`` (default ``benchmarks/results/search_<machine>.json``).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

from coat_hf import COATConfig, COATModel, fused_search
from coat_hf.correspondence import _blocked_pass, _unit_maps

REPO = Path(__file__).resolve().parents[1]


def encoder_scales(preset: str) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each map E gives the ``preset`` model."""
    model = COATModel(COATConfig.preset(preset)).eval()
    size = model.config.image_size
    with torch.no_grad():
        features = model.encoder(torch.zeros(1, 3, size, size))
    return [tuple(f.shape[1:]) for f in features]


def candidates(args: argparse.Namespace) -> list[dict[str, int | bool]]:
    """``LAUNCH`` first, then every other combination of the command line's settings."""
    grid = [dict(zip(("BLOCK_N", "MAX_BLOCK_C", "LANES", "num_warps", "num_stages"), values)) for values in
            itertools.product(args.block_n, args.max_block_c, [bool(v) for v in args.lanes], args.warps, args.stages)]
    return [fused_search.LAUNCH] + [launch for launch in grid if launch != fused_search.LAUNCH]


def registers(launch: dict[str, int | bool], channels: int, dtype: str = "bf16") -> tuple[int, int]:
    """Registers and spilled bytes per thread of the kernel compiled for sm_90 (an H100) for maps of ``channels``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = fused_search._maxima_kernel
    pointers = {"f1": f"*{dtype}", "f2": f"*{dtype}", "row_max": "*fp32", "col_max": "*fp32", "row_arg": "*i32",
                "col_arg": "*i32"}
    constants = fused_search.kernel_constants(channels, dtype == "fp32", True, launch)
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32")
                 for name in inspect.signature(kernel.fn).parameters}
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": launch["num_warps"], "num_stages": launch["num_stages"]})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(item.split(":") for item in next(line for line in usage.splitlines() if "REG:" in line).split())
    return int(fields["REG"]), int(fields["STACK"])


def _median_ms(call, repeats: int) -> float:
    call()  # compiling and warming up
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_on_cuda(launches: list[dict], scales: list[tuple[int, int, int]], batch: int, repeats: int) -> list[dict]:
    """Milliseconds per call of each candidate and of the blocked search at each scale, with agreement rows."""
    rows = []
    for channels, height, width in scales:
        maps = [torch.randn(batch, channels, height, width, device="cuda") for _ in range(2)]
        units = _unit_maps(*maps)  # (B, N1, C) and (B, C, N2), as in training
        f1, f2 = (unit.to(torch.bfloat16) for unit in units)  # what the fused search multiplies under autocast
        with torch.autocast("cuda", torch.bfloat16):
            blocked_ms = _median_ms(lambda: _blocked_pass(*units, 1024, None, maps[1], None), repeats)
        reference = None
        for launch in launches:
            def search(launch=launch):
                return fused_search._reduce(*fused_search._launch(f1, f2, True, lambda k: k, launch), True,
                                            torch.float32)
            found = search()
            reference = found if reference is None else reference
            agree = [(a == b).float().mean().item() for a, b in ((found[1], reference[1]), (found[3], reference[3]))]
            rows.append({"scale": f"{height}x{width}x{channels}", "batch": batch, "launch": launch,
                         "ms": _median_ms(search, repeats), "blocked_ms": blocked_ms,
                         "row_arg_agreement": agree[0], "col_arg_agreement": agree[1]})
            print(f"{rows[-1]['scale']:>10} {json.dumps(launch):90} {rows[-1]['ms']:7.3f} ms "
                  f"(blocked {blocked_ms:.3f}) agreement {agree[0]:.4f} / {agree[1]:.4f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--block_n", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--max_block_c", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--lanes", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--stages", type=int, nargs="+", default=[3])
    parser.add_argument("--registers", action="store_true", help="compile for sm_90 and count registers, no GPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("block_n", "max_block_c", "warps"):
        bad = [v for v in getattr(args, name) if v < 1 or v & (v - 1) or (name != "warps" and v < 16)]
        if bad:
            parser.error(f"--{name} takes powers of two{'' if name == 'warps' else ' from 16'}, got {bad}")
    if min(args.stages) < 1:
        parser.error(f"--stages must be at least 1, got {args.stages}")
    if fused_search.triton is None:
        parser.error("the fused search needs Triton (pip install triton)")
    if not args.registers and not torch.cuda.is_available():
        parser.error("timing needs a CUDA device; --registers compiles without one")
    scales = encoder_scales(args.preset)
    launches = candidates(args)
    if args.registers:
        for launch, (channels, height, width) in itertools.product(launches, scales):
            regs, spilled = registers(launch, channels)
            print(f"{f'{height}x{width}x{channels}':>10} {json.dumps(launch):90} {regs:3d} registers, "
                  f"{spilled} bytes spilled")
        return
    rows = time_on_cuda(launches, scales, args.batch, args.repeats)
    machine = torch.cuda.get_device_name().replace(" ", "-")
    out = args.out or REPO / "benchmarks" / "results" / f"search_{machine}.json"
    meta = {"machine": machine, "torch": torch.__version__, "triton": fused_search.triton.__version__}
    existing = json.loads(out.read_text()) if out.exists() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(existing + [{**meta, **row} for row in rows], indent=1) + "\n")
    print(f"rows appended to {out}")


if __name__ == "__main__":
    main()
