"""Running the evaluation: every method on every pair, every metric on every result, then the reports."""

from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..modeling_coat import COATModel
from ..pretrained import default_model, model_load_error, resolve_model
from .methods import TransferMethod, build_methods
from .metrics import TransferMetrics
from ..image_io import image_and_mask_folders
from .pairs import ImageLoader, list_images, sample_images, sample_pairs
from .report import plot_tradeoff, save_grid, summarize, write_json, write_markdown

OUTPUT_FILES = ("results.json", "results.md", "tradeoff.png", "grid.png")


@dataclass
class EvaluationConfig:
    """Everything that fixes an evaluation run (stored in ``results.json``)."""

    data: str
    out: str
    model: str | None = None  # a bundled name, a folder or a Hub id; None: the bundled default (as the pipeline)
    masks: str | None = None
    include: str | None = None
    holdout_last: int = 0
    num_pairs: int = 50
    num_reconstruction: int = 20
    seed: int = 0
    n_values: list[int] | None = None  # None: ``methods.default_n_values``
    swap_n: int | None = None  # None: the model's default_n
    warp_scale: int = 1
    alignment: str | None = None  # the COAT sweep's alignment rule; None: the model's own
    color_match: bool = False  # also the sweep with the style's colours matched afterwards (``+ color match`` rows)
    grid_pairs: int = 4
    grid_size: int = 64
    structure_grid: int = 32
    num_projections: int = 256
    lab_projections: int = 64
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    threads: int | None = None  # torch intra-op threads (None: torch's default)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Where a measurement ran: CPU, cores, torch threads and versions (and the GPU when used)."""
    info = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def draw_seed(seed: int, phase: int, index: int) -> int:
    """The decoder-noise seed of item ``index`` of a phase (0: pairs, 1: reconstruction): same for every method."""
    return int(np.random.SeedSequence([seed, phase, index]).generate_state(1)[0])


def _timed(method: TransferMethod, content: Tensor, style: Tensor, seed: int) -> tuple[Tensor, float]:
    """The method's result clamped to [-1, 1] (as saved images are) and its wall-clock seconds."""
    generator = torch.Generator().manual_seed(seed)
    if content.is_cuda:
        torch.cuda.synchronize(content.device)
    start = time.perf_counter()
    result = method(content, style, generator=generator)
    if content.is_cuda:
        torch.cuda.synchronize(content.device)
    return result.clamp(-1, 1), time.perf_counter() - start


@torch.inference_mode()
def evaluate(
    methods: list[TransferMethod],
    metrics: TransferMetrics,
    loader: ImageLoader,
    pairs: list[tuple[Path, Path]],
    reconstruction_images: list[Path],
    seed: int = 0,
    grid_pairs: int = 4,
    device: str | torch.device = "cpu",
) -> tuple[list[dict[str, Any]], list[list[Tensor]]]:
    """Per-method summaries of every metric and latency, and the grid's rows (content, style, results)."""
    values = {m.name: {"transfer": defaultdict(list), "reconstruction": defaultdict(list), "seconds": []} for m in methods}
    grid_rows = []
    for index, (content_path, style_path) in enumerate(tqdm(pairs, desc="transfer pairs")):
        (content, content_mask), (style, style_mask) = loader(content_path), loader(style_path)
        content, style = content.to(device), style.to(device)
        content_ref = metrics.reference(content, None if content_mask is None else content_mask.to(device))
        style_ref = metrics.reference(style, None if style_mask is None else style_mask.to(device))
        row = [content[0].cpu(), style[0].cpu()]
        for method in methods:
            result, seconds = _timed(method, content, style, draw_seed(seed, 0, index))
            values[method.name]["seconds"].append(seconds)
            for key, value in metrics.transfer(result, content_ref, style_ref).items():
                values[method.name]["transfer"][key].append(value)
            if index < grid_pairs and method.family not in ("content", "style"):
                row.append(result[0].cpu())
        if index < grid_pairs:
            grid_rows.append(row)
    for index, path in enumerate(tqdm(reconstruction_images, desc="reconstruction")):
        image = loader(path)[0].to(device)
        for method in methods:
            result, _ = _timed(method, image, image, draw_seed(seed, 1, index))
            for key, value in metrics.reconstruction(result, image).items():
                values[method.name]["reconstruction"][key].append(value)
    summaries = [
        {
            "name": m.name,
            "family": m.family,
            "n": m.n,
            "transfer": {k: summarize(v) for k, v in values[m.name]["transfer"].items()},
            "reconstruction": {k: summarize(v) for k, v in values[m.name]["reconstruction"].items()},
            "seconds_per_pair": summarize(values[m.name]["seconds"]),
        }
        for m in methods
    ]
    return summaries, grid_rows


def run_evaluation(config: EvaluationConfig) -> dict[str, Any]:
    """Load the model and images, evaluate every method, and write ``OUTPUT_FILES`` into ``config.out``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)
    try:
        return _run_evaluation(config)
    finally:
        torch.set_num_threads(threads)


def _load_model(model: str | None) -> COATModel:
    """The model in float32 (bundled models are stored in float16; the metrics and baselines compute in float32).

    Raises:
        ValueError: it cannot be loaded (the message is one line naming ``--model``).
    """
    try:
        return COATModel.from_pretrained(resolve_model(model), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise model_load_error(model, err) from None


def _name(path: Path, folder: Path) -> str:
    """An image's name in the results: its path relative to the data folder (``cat/0001.jpg``)."""
    return path.relative_to(folder).as_posix()


def _run_evaluation(config: EvaluationConfig) -> dict[str, Any]:
    start = time.perf_counter()
    # The images first: a wrong folder fails before the model loads.
    data_dir, mask_dir = image_and_mask_folders(config.data, config.masks)
    images = list_images(data_dir, config.include, config.holdout_last)
    pairs = sample_pairs(images, config.num_pairs, config.seed)
    reconstruction_images = sample_images(images, min(config.num_reconstruction, len(images)), config.seed)
    model = _load_model(config.model).to(config.device).eval()
    methods = build_methods(model, config.n_values, config.swap_n, config.warp_scale, config.alignment,
                            config.color_match)
    metrics = TransferMetrics(
        grid_size=config.grid_size, structure_grid=config.structure_grid,
        num_projections=config.num_projections, lab_projections=config.lab_projections, seed=config.seed,
    ).to(config.device)
    summaries, grid_rows = evaluate(
        methods, metrics, ImageLoader(model.config, mask_dir, data_dir), pairs, reconstruction_images,
        config.seed, config.grid_pairs, config.device,
    )
    results = {
        "config": {
            **asdict(config),
            "data": str(data_dir),
            "masks": None if mask_dir is None else str(mask_dir),
            "model": config.model or default_model(),
            "model_path": resolve_model(config.model),
            "image_size": model.config.image_size,
            "num_modulation_layers": model.num_modulation_layers,
            "n_values": [m.n for m in methods if m.family == "coat"],
            "swap_n": next(m.n for m in methods if m.family == "latent-swap"),
            "metrics": "see coat_hf/evaluation/metrics.py: VGG16 relu1_2-relu4_3 hypercolumns, LPIPS alex",
        },
        "machine": machine_info(str(config.device)),
        "seconds_total": time.perf_counter() - start,
        "pairs": [{"content": _name(c, data_dir), "style": _name(s, data_dir)} for c, s in pairs],
        "reconstruction_images": [_name(p, data_dir) for p in reconstruction_images],
        "methods": summaries,
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    write_markdown(results, out / "results.md")
    plot_tradeoff(results, out / "tradeoff.png")
    titles = ["content", "style", *(m.name for m in methods if m.family not in ("content", "style"))]
    if grid_rows:
        save_grid(titles, grid_rows, out / "grid.png")
    return results
