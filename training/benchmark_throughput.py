"""Measure training throughput (images/s) and peak memory of a training config for 1, 2, ... processes.

    python training/benchmark_throughput.py --config training/configs/small.yaml --processes 1 2

Each process count runs ``train.py`` for ``--warmup_steps + --steps`` steps (several processes through
``torch.distributed.run``, on CPU with gloo) and reads the per-step ``images_per_s`` and
``peak_memory_mb`` it logs; the warm-up steps are left out. Writes a JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"


def default_data_dir() -> Path:
    return Path(os.environ.get("COAT_DATA_DIR", REPO.parent / "shared" / "data")) / "celeba" / "train"


def run_training(config: str, data_dir: Path, num_processes: int, warmup_steps: int, steps: int,
                 batch_size: int | None, output_dir: Path, port: int) -> dict:
    """One measured run; returns throughput and memory from its metrics.jsonl."""
    launcher = [sys.executable]
    env = dict(os.environ)
    if num_processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(num_processes), "--master_port", str(port)]
        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"
    total = warmup_steps + steps
    args = ["--config", config, "--data_dir", str(data_dir), "--output_dir", str(output_dir),
            "--max_steps", str(total), "--lr_warmup_steps", "0", "--log_every", "1", "--report_to", "none",
            "--checkpoint_every", str(10 * total), "--sample_every", str(10 * total), "--keep_last", "1"]
    if batch_size:
        args += ["--batch_size", str(batch_size)]
    started = time.perf_counter()
    result = subprocess.run([*launcher, str(TRAIN), *args], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"training with {num_processes} process(es) failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in rows if r["step"] > warmup_steps]
    if any(r["num_processes"] != num_processes for r in rows):
        raise RuntimeError(f"asked for {num_processes} processes, the run reports {rows[0]['num_processes']}")
    per_process_batch = int(yaml.safe_load((output_dir / "config.yaml").read_text())["batch_size"])
    images_per_s = statistics.median(r["images_per_s"] for r in measured)
    global_batch = per_process_batch * num_processes
    return {
        "num_processes": num_processes,
        "batch_size_per_process": per_process_batch,
        "global_batch": global_batch,
        "measured_steps": len(measured),
        "images_per_s": round(images_per_s, 3),
        "s_per_step": round(global_batch / images_per_s, 3),
        "peak_memory_mb_per_process": round(max(r["peak_memory_mb"] for r in rows), 1),
        "wall_s_including_startup": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "training/configs/small.yaml"))
    parser.add_argument("--data_dir", type=Path, default=default_data_dir())
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=None, help="per process (default: the config's)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/training_throughput.json")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        raise SystemExit(f"--data_dir {args.data_dir} is not a folder of training images")

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="coat-bench-") as tmp:
        for i, n in enumerate(args.processes):
            print(f"training {args.warmup_steps}+{args.steps} steps with {n} process(es) ...", flush=True)
            results.append(run_training(args.config, args.data_dir, n, args.warmup_steps, args.steps,
                                        args.batch_size, Path(tmp) / f"p{n}", 29600 + i))
    report = {
        "config": os.path.relpath(args.config, REPO),
        "data_dir": str(args.data_dir),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "median of per-step images/s after the warm-up steps; peak memory = max RSS of one process "
                "(CUDA max allocated on a GPU); other jobs on the machine lower these numbers (see load averages)",
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'processes':>9} {'batch/proc':>10} {'images/s':>9} {'s/step':>7} {'peak MB/proc':>12}")
    for r in results:
        print(f"{r['num_processes']:>9} {r['batch_size_per_process']:>10} {r['images_per_s']:>9.2f} "
              f"{r['s_per_step']:>7.2f} {r['peak_memory_mb_per_process']:>12.0f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
