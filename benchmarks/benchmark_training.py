"""Training throughput: images/s, peak memory and achieved TFLOP/s against the device's measured matmul rate.

    python benchmarks/benchmark_training.py --config training/configs/small.yaml --processes 1 2
    python benchmarks/benchmark_training.py --config training/configs/coat-celeba-128-gpu.yaml \\
        --data_dir faces/ --mixed_precision bf16 --batch_size 128

Each process count runs the real training step (:class:`coat_hf.training.trainer.Trainer`) for
``--warmup`` + ``--steps`` steps (several processes through ``torch.distributed.run``, gloo on a CPU),
counts the FLOPs of one step with ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward),
and measures the device's dense matmul rate in the same run (bf16 on CUDA under bf16, float32
otherwise, by one process with its threads), so the achieved rate is reported as a fraction of what the
processes together can do. Appends one
JSON row per run to ``--out`` (default ``benchmarks/results/training_<machine>.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def machine_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-")
    return f"cpu-{os.cpu_count()}cores"


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """The measured dense matmul rate of ``device`` in TFLOP/s (best of ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def profile_steps(trainer, first_step: int, steps: int, path: Path) -> dict:
    """Profile ``steps`` training steps with ``torch.profiler``; writes the busiest operators to ``path``.

    Returns the device time the kernels took and the number of kernels launched, per step: a device busy for
    a small part of a step's wall time is waiting on the host (kernel launches), not computing.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for step in range(first_step, first_step + steps):
            trainer.train_step(step)
        sync()
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"] if cuda else []
    busy = sum(e.self_device_time_total for e in kernels) / 1e6 / steps if cuda else wall  # kernels, not operators
    summary = {"profiled_wall_ms_per_step": 1e3 * wall, "device_busy_ms_per_step": 1e3 * busy,
               "kernels_per_step": len(kernels) / steps}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary) + "\n" + events.table(sort_by=sort, row_limit=60, max_name_column_width=90))
    return summary


def measure(train_args: list[str], warmup: int, steps: int, profile_path: Path | None = None) -> dict | None:
    """Run the training step in this process (one rank); returns the row on rank 0."""
    from torch.utils.flop_counter import FlopCounterMode

    from coat_hf.training.arguments import parse_arguments
    from coat_hf.training.compile_cache import save_compile_cache
    from coat_hf.training.trainer import Trainer, peak_memory_mb

    config = parse_arguments(train_args)
    trainer = Trainer(config)
    acc, args = trainer.accelerator, config.training
    device = acc.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    trainer.objective.train()
    start = time.perf_counter()
    for step in range(warmup):
        trainer.train_step(step)
    sync()
    warmup_seconds = time.perf_counter() - start  # compiling included
    if args.compile_cache and acc.is_main_process:
        save_compile_cache(args.compile_cache)  # as training does after its first step
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:  # same FLOPs, counted
        trainer.train_step(warmup)
    flops_per_step = counter.get_total_flops() * acc.num_processes
    sync()
    acc.wait_for_everyone()
    start = time.perf_counter()
    for step in range(warmup + 1, warmup + 1 + steps):
        parts = trainer.train_step(step)
    parts["loss"].item()
    sync()
    acc.wait_for_everyone()
    seconds = time.perf_counter() - start
    global_batch = args.batch_size * acc.num_processes * args.gradient_accumulation_steps
    memory = acc.reduce(torch.tensor(peak_memory_mb(device), device=device), "max").item()
    profiled = profile_steps(trainer, warmup + 1 + steps, 3, profile_path) if profile_path else {}
    if not acc.is_main_process:
        return None
    bf16 = device.type == "cuda" and args.mixed_precision == "bf16"
    rate = matmul_tflops(device, torch.bfloat16 if bf16 else torch.float32, 8192 if device.type == "cuda" else 1024)
    achieved = flops_per_step * steps / seconds / 1e12
    return {
        "machine": machine_name(), "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "processes": acc.num_processes, "threads_per_process": torch.get_num_threads(),
        "batch_per_process": args.batch_size, "global_batch": global_batch, "image_size": trainer.model.config.image_size,
        "mixed_precision": args.mixed_precision, "channels_last": args.channels_last, "compile": args.compile,
        **({"compile_scope": args.compile_scope, "compile_mode": args.compile_mode,
            "compile_cache_loaded": trainer.compile_cache_loaded} if args.compile else {}),
        "transfer_weight": config.objective.transfer_weight, "warmup_steps": warmup, "warmup_s": warmup_seconds,
        "steps": steps,
        "images_per_s": global_batch * steps / seconds, "peak_memory_mb": memory,
        "gflop_per_image": flops_per_step / global_batch / 1e9, "achieved_tflops": achieved,
        "matmul_tflops": rate, "matmul_dtype": "bfloat16" if bf16 else "float32",
        "fraction_of_matmul_rate": achieved / (rate * acc.num_processes),  # each process has its own cores / GPU
        "train_alignment": config.objective.train_alignment,
        "batch_branches": config.objective.branches_batched(device),
        "alignment_kernel": trainer.model.config.alignment_kernel, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        **profiled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "training/configs/small.yaml"))
    parser.add_argument("--data_dir", default=str(Path(os.environ.get("COAT_DATA_DIR", REPO.parent / "shared/data"))
                                                   / "celeba" / "train"))
    parser.add_argument("--processes", type=int, nargs="+", default=[1])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON file the rows are appended to")
    parser.add_argument("--profile", default=None,
                        help="also profile 3 steps (one process) and write the busiest operators to this text file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, train_overrides = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as tmp:
        train_args = ["--config", args.config, "--data_dir", args.data_dir, "--output_dir", tmp,
                      "--report_to", "none", "--lr_warmup_steps", "0", *train_overrides]
        if args.worker:
            row = measure(train_args, args.warmup, args.steps, Path(args.profile) if args.profile else None)
            if row is not None:
                print("ROW " + json.dumps(row), flush=True)
            return
        rows = []
        for processes in args.processes:
            command = [sys.executable, __file__, "--worker", "--warmup", str(args.warmup), "--steps", str(args.steps),
                       "--config", args.config, "--data_dir", args.data_dir, *train_overrides]
            if args.profile and processes == 1:
                command += ["--profile", args.profile]
            env = dict(os.environ)
            if processes > 1:
                command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                                "--master_port", str(29500 + processes)]
                if not torch.cuda.is_available():
                    env["ACCELERATE_USE_CPU"] = "1"
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            found = [line[4:] for line in result.stdout.splitlines() if line.startswith("ROW ")]
            if result.returncode != 0 or not found:
                raise SystemExit(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
            rows.append(json.loads(found[0]))
    out = Path(args.out or REPO / "benchmarks" / "results" / f"training_{rows[0]['machine']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(previous + rows, indent=1) + "\n")
    print("| processes | batch | images/s | peak MB | GFLOP/image | TFLOP/s | of matmul rate |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['processes']} | {r['global_batch']} | {r['images_per_s']:.2f} | {r['peak_memory_mb']:.0f} | "
              f"{r['gflop_per_image']:.1f} | {r['achieved_tflops']:.3f} | {100 * r['fraction_of_matmul_rate']:.1f}% |")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
