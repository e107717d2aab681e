"""Inference latency and peak memory of COAT, latent-swap and warp per pair, and of the latent alignment.

    python benchmarks/benchmark_inference.py [--sizes 64,128,256,512,1024] [--max-seconds 100] [--threads N]
    python benchmarks/benchmark_inference.py --interleaved 128 --threads 1     (COAT / latent-swap, one process)

Models: untrained (seeded) ones with the bundled models' architecture (the ``small`` preset's encoder, widths 48,
96, 160, 256, style dimension 192, the pyramid E_mod and nearest matches), at each image size S, with decoder widths ``min(256, 32 · 2^(levels above S))`` (32 at the
output resolution, doubling towards 4 px up to 256, which is the small preset at 128 px except 256 for its
192 at 16 px). Latency and memory do not depend on the weights. Each method handles one pair (batch 1):
``coat`` (nearest matches at all four scales, n = default_n), ``latent-swap`` (no alignment) and ``warp``
(nearest neighbours on E's scale-1 map); image decoding and resizing are not included.

Alignment: ``align_features`` (blocked, ``block_size`` 1024) against the naive reading of Eq. 1-3 that builds
the full N x N similarity and consistency matrices, on random 48-channel maps of side S/2 (E's finest scale
at image size S, the largest of COAT's four alignments).

Every measurement runs in its own process, so its peak resident memory (``ru_maxrss``) is its own; memory
is reported as that peak minus the process's resident memory just before the first call (model, inputs
and libraries loaded), i.e. what the call itself needs. Latency is the median of the timed repeats after
one warm-up call (no warm-up when the first call takes over 10 s; repeats stop once their total would pass
``--max-seconds``). A measurement is skipped when its time, predicted from the previous size (x16 per
doubling for methods with an N^2 search, x4 for latent-swap), exceeds ``--max-seconds``, or, for the naive
alignment, when its N x N matrices would not fit in ``--max-naive-gb``.
``--threads`` sets torch's intra-op threads: on a CPU shared with other jobs, 1 thread gives stable numbers
where 2 threads wait on each other (up to 30x slower calls). Results go to
``benchmarks/results/inference_<device>.{json,md,png}``, with the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from coat_hf import COATConfig, COATModel
from coat_hf.correspondence import align_features, cosine_similarity, mutual_consistency
from coat_hf.evaluation.methods import COATTransfer, FeatureWarp, TransferMethod
from coat_hf.evaluation.runner import machine_info

RESULTS_DIR = Path(__file__).resolve().parent / "results"
METHODS = ("coat", "latent-swap", "warp")
ALIGNMENTS = ("align-blocked", "align-naive")
ALIGN_CHANNELS = 48  # the small preset's finest encoder width
WARMUP_LIMIT_S = 10.0
# Predicted time growth when the image side doubles: x16 for an N^2 search over N ∝ S^2 positions, x4 for convs.
GROWTH_PER_DOUBLING = {"coat": 16.0, "latent-swap": 4.0, "warp": 16.0, "align-blocked": 16.0, "align-naive": 16.0}


def benchmark_config(image_size: int) -> COATConfig:
    """The bundled models' architecture (the small preset, pyramid E_mod, nearest matches) at ``image_size``, decoder
    widths 32 at the output doubling to 256."""
    levels = image_size.bit_length() - 2  # resolutions 4, 8, ..., image_size
    decoder_channels = [min(256, 32 * 2 ** (levels - 1 - i)) for i in range(levels)]
    return COATConfig.preset("small", image_size=image_size, decoder_channels=decoder_channels, alignment="nearest",
                             modulation_pyramid=True)


def seeded_model_and_pair(size: int, device: str) -> tuple[COATModel, torch.Tensor, torch.Tensor]:
    """The untrained benchmark model at ``size`` and a random content/style pair (1, 3, S, S), seed 0."""
    torch.manual_seed(0)
    model = COATModel(benchmark_config(size)).to(device).eval()
    content, style = (torch.rand(1, 3, size, size, device=device) * 2 - 1 for _ in range(2))
    return model, content, style


def build_method(name: str, model: COATModel) -> TransferMethod:
    if name == "coat":
        return COATTransfer(model)
    if name == "latent-swap":
        return COATTransfer(model, use_alignment=False)
    return FeatureWarp(model, scale=1)


def naive_align(content_feat: torch.Tensor, style_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1-3 with the whole (B, N1, N2) S and Q in memory: aligned map (B, C, H1, W1), confidence (B, N1)."""
    similarity = cosine_similarity(content_feat, style_feat)  # (B, N1, N2), Eq. 1
    consistency = mutual_consistency(similarity)  # (B, N1, N2), Eq. 2
    nearest = similarity.argmax(dim=2)  # (B, N1)
    mutual = similarity.argmax(dim=1).gather(1, nearest) == torch.arange(nearest.shape[1], device=nearest.device)
    b, c = content_feat.shape[:2]
    moved = style_feat.flatten(2).gather(2, nearest[:, None].expand(b, c, -1))
    aligned = torch.where(mutual[:, None], moved, content_feat.flatten(2)).view_as(content_feat)  # Eq. 3
    return aligned, consistency.gather(2, nearest[..., None])[..., 0]


def _rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _timed(call, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.inference_mode()
def measure(name: str, size: int, repeats: int, max_seconds: float, device: str) -> dict:
    """One measurement (run it in a fresh process): the repeats' latencies and the call's peak memory."""
    if name in METHODS:
        model, content, style = seeded_model_and_pair(size, device)
        method = build_method(name, model)
        call = lambda: method(content, style, generator=torch.Generator().manual_seed(0))  # noqa: E731
    else:
        torch.manual_seed(0)
        content, style = (torch.randn(1, ALIGN_CHANNELS, size // 2, size // 2, device=device) for _ in range(2))
        align = align_features if name == "align-blocked" else naive_align
        call = lambda: align(content, style)  # noqa: E731
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = _rss_mb()
    first = _timed(call, device)
    times = [] if first <= WARMUP_LIMIT_S else [first]  # a quick first call is the warm-up; a slow one counts
    while len(times) < repeats and sum(times) + (times[-1] if times else first) <= max_seconds:
        times.append(_timed(call, device))
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    return {"seconds": times, "median_s": statistics.median(times), "peak_mb": peak - baseline, "baseline_mb": baseline}


@torch.inference_mode()
def interleaved(size: int, rounds: int, device: str) -> dict:
    """COAT against latent-swap at one size with their calls interleaved in one process (a shared CPU's load then
    hits both alike): median latency in ms of ``coat``, ``latent-swap`` and ``coat+matches`` (the model also
    returning its per-scale matches, as the app's correspondence panel asks), and the ratios to latent-swap."""
    model, content, style = seeded_model_and_pair(size, device)
    calls = {"coat": {}, "latent-swap": {"use_alignment": False}, "coat+matches": {"output_correspondence": True}}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds + 2):  # the first two rounds warm up
        for name, kwargs in calls.items():
            times[name].append(_timed(lambda: model(content, style, generator=torch.Generator().manual_seed(0),
                                                    **kwargs), device))
    median = {name: 1e3 * statistics.median(t[2:]) for name, t in times.items()}
    return {"size": size, "rounds": rounds, "median_ms": median,
            "ratio_to_latent_swap": {name: ms / median["latent-swap"] for name, ms in median.items()}}


def measure_in_subprocess(name: str, size: int, repeats: int, max_seconds: float, device: str) -> dict:
    """``measure`` in a fresh interpreter (with this one's torch threads), so that ru_maxrss is its alone."""
    spec = json.dumps({"name": name, "size": size, "repeats": repeats, "max_seconds": max_seconds, "device": device})
    command = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--worker", spec]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        killed = done.returncode < 0 or "out of memory" in done.stderr.lower()
        return {"skipped": "out of memory" if killed else f"failed: {done.stderr.strip().splitlines()[-1]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeats_for(size: int) -> int:
    """5 timed repeats up to 256 px, 3 at 512, 1 beyond."""
    return 5 if size <= 256 else 3 if size <= 512 else 1


def naive_matrix_gb(size: int) -> float:
    """Memory of the naive alignment's two (N x N) float32 matrices, S and Q, for maps of side size/2."""
    n = (size // 2) ** 2
    return 2 * 4 * n * n / 2**30


def run(sizes: list[int], max_seconds: float, max_naive_gb: float, device: str) -> dict:
    rows: dict[str, dict[int, dict]] = {name: {} for name in (*METHODS, *ALIGNMENTS)}
    load_before = os.getloadavg()
    for name in rows:
        previous: tuple[int, float] | None = None
        for size in sizes:
            predicted = None if previous is None else previous[1] * GROWTH_PER_DOUBLING[name] ** math.log2(size / previous[0])
            if name == "align-naive" and naive_matrix_gb(size) > max_naive_gb:
                result = {"skipped": f"needs {naive_matrix_gb(size):.0f} GiB for S and Q (> {max_naive_gb:g} GiB)"}
            elif predicted is not None and predicted > max_seconds:
                result = {"skipped": f"predicted {predicted:.0f} s > --max-seconds {max_seconds:g}"}
            else:
                result = measure_in_subprocess(name, size, repeats_for(size), max_seconds, device)
            rows[name][size] = result
            if "median_s" in result:
                previous = (size, result["median_s"])
            print(f"{name:>13} {size:>5} px: " + (
                f"{result['median_s'] * 1000:10.1f} ms  {result['peak_mb']:8.1f} MiB  ({len(result['seconds'])} runs)"
                if "median_s" in result else result["skipped"]), flush=True)
    return {
        "machine": machine_info(device),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "sizes": sizes,
        "max_seconds": max_seconds,
        "config_rule": benchmark_config.__doc__,
        "configs": {size: benchmark_config(size).to_diff_dict() for size in sizes},
        "results": {name: {str(size): r for size, r in by_size.items()} for name, by_size in rows.items()},
    }


def markdown_table(report: dict) -> str:
    """Median latency (ms) and peak memory above baseline (MiB) per method and image size."""
    sizes = report["sizes"]
    lines = ["| method | " + " | ".join(f"{s} px" for s in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name, by_size in report["results"].items():
        cells = []
        for size in sizes:
            r = by_size[str(size)]
            cells.append(f"{_format_ms(r['median_s'])} / {r['peak_mb']:.0f} MiB" if "median_s" in r else f"– ({r['skipped']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def plot(report: dict, path: Path) -> None:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    latency_ax, memory_ax = figure.subplots(1, 2)
    for name, by_size in report["results"].items():
        done = [(int(s), r) for s, r in by_size.items() if "median_s" in r]
        if not done:
            continue
        style = "--" if name.startswith("align") else "-"
        latency_ax.plot([s for s, _ in done], [r["median_s"] for _, r in done], "o" + style, label=name)
        memory_ax.plot([s for s, _ in done], [max(r["peak_mb"], 0.1) for _, r in done], "o" + style, label=name)
    for ax, label in ((latency_ax, "median latency per pair (s)"), (memory_ax, "peak memory of the call (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["sizes"], [str(size) for size in report["sizes"]])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("image size (px); alignment: maps of side size/2")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    latency_ax.legend(fontsize=8)
    machine = report["machine"]
    figure.suptitle(f"COAT inference on {machine['processor']} (torch threads: {machine['torch_threads']}, {machine['device']})")
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024", help="comma-separated image sizes (powers of two)")
    parser.add_argument("--max-seconds", type=float, default=100.0,
                        help="skip a measurement predicted to take longer; also caps the repeats' total")
    parser.add_argument("--max-naive-gb", type=float, default=8.0, help="largest S + Q of the naive alignment")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--interleaved", type=int, metavar="SIZE",
                        help="only COAT against latent-swap at SIZE px, calls interleaved (see interleaved())")
    parser.add_argument("--rounds", type=int, default=25, help="rounds of --interleaved")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.interleaved:
        result = {"machine": machine_info(args.device), **interleaved(args.interleaved, args.rounds, args.device)}
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"inference_interleaved_{args.device.split(':')[0]}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("median_ms", "ratio_to_latent_swap")}, indent=1))
        return
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(measure(spec["name"], spec["size"], spec["repeats"], spec["max_seconds"], spec["device"])))
        return
    report = run([int(size) for size in args.sizes.split(",")], args.max_seconds, args.max_naive_gb, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"inference_{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_reports(report, stem)
    print(markdown_table(report))
    print(f"wrote {stem}.json, .md, .png")


def write_reports(report: dict, stem: Path) -> None:
    """``<stem>.md`` (the table with the machine and its load) and ``<stem>.png`` of a ``run`` report."""
    machine = report["machine"]
    stem.with_suffix(".md").write_text(
        f"# Inference benchmark\n\nMedian latency / peak memory of the call, batch 1, {machine['processor']}, "
        f"{machine['cpu_count']} cores, torch threads: {machine['torch_threads']}, torch {machine['torch']}, device "
        f"{machine['device']}. Load average (1 min) before/after: {report['load_average_before'][0]:.1f} / "
        f"{report['load_average_after'][0]:.1f}.\n\n{markdown_table(report)}\n"
    )
    plot(report, stem.with_suffix(".png"))

if __name__ == "__main__":
    main()
