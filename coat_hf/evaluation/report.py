"""Writing the evaluation's outputs: ``results.json``, ``results.md``, ``tradeoff.png`` and ``grid.png``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..image_io import to_pil

# (key, column title, number format) of the Markdown table, in order.
TRANSFER_COLUMNS = (
    ("structure_distance", "structure dist. ↓", "{:.3f}"),
    ("swd_vgg", "SWD VGG ↓", "{:.3f}"),
    ("swd_lab", "SWD Lab ↓", "{:.2f}"),
)
RECONSTRUCTION_COLUMNS = (("psnr", "rec. PSNR dB ↑", "{:.2f}"), ("lpips", "rec. LPIPS ↓", "{:.3f}"))


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean, population standard deviation, median and the values themselves, of a non-empty list."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "median": statistics.median(values),
        "values": values,
    }


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def markdown_table(results: dict[str, Any]) -> str:
    """One row per method: mean ± std of every metric and the median latency per pair."""
    columns = [*TRANSFER_COLUMNS, *RECONSTRUCTION_COLUMNS]
    lines = [
        "| method | " + " | ".join(title for _, title, _ in columns) + " | ms / pair |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for method in results["methods"]:
        metrics = {**method["transfer"], **method["reconstruction"]}
        cells = []
        for key, _, fmt in columns:
            if key in metrics:
                cells.append(f"{fmt.format(metrics[key]['mean'])} ± {fmt.format(metrics[key]['std'])}")
            else:
                cells.append("–")
        latency = method["seconds_per_pair"]["median"] * 1000
        lines.append(f"| {method['name']} | " + " | ".join(cells) + f" | {latency:.0f} |")
    return "\n".join(lines)


def write_markdown(results: dict[str, Any], path: Path) -> None:
    config = results["config"]
    header = (
        f"# Appearance-transfer evaluation\n\n"
        f"Model `{config['model']}` at {config['image_size']} px on `{config['data']}`"
        f"{' with masks `' + config['masks'] + '`' if config['masks'] else ''}: "
        f"{len(results['pairs'])} content/style pairs and {len(results['reconstruction_images'])} "
        f"reconstruction images (content = style), seed {config['seed']}. Mean ± std over images; "
        f"latency is the median per pair on {config['device']}.\n\n"
    )
    path.write_text(header + markdown_table(results) + "\n")


def plot_tradeoff(results: dict[str, Any], path: Path) -> None:
    """Structure distance against each appearance distance: COAT as a curve over n, other methods as points."""
    from matplotlib.figure import Figure  # the [eval] extra

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
    methods = results["methods"]
    coat = sorted((m for m in methods if m["family"] == "coat"), key=lambda m: m["n"])
    for ax, (key, title, _) in zip(axes, TRANSFER_COLUMNS[1:]):
        if coat:
            xs = [m["transfer"]["structure_distance"]["mean"] for m in coat]
            ys = [m["transfer"][key]["mean"] for m in coat]
            ax.plot(xs, ys, "o-", color="black", label="coat (over n)")
            for m, x, y in zip(coat, xs, ys):
                ax.annotate(f"n={m['n']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for m in methods:
            if m["family"] == "coat":
                continue
            x, y = m["transfer"]["structure_distance"]["mean"], m["transfer"][key]["mean"]
            ax.plot([x], [y], "s", label=m["name"])
        ax.set_xlabel("structure distance to content ↓")
        ax.set_ylabel(f"{title.removesuffix(' ↓')} to style ↓")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Structure kept vs appearance taken ({len(results['pairs'])} pairs)")
    figure.savefig(path, dpi=120)


def _label_tile(text: str, size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), "white")
    font = ImageFont.load_default(size=max(size // 8, 8))
    ImageDraw.Draw(tile).multiline_text((size // 2, size // 2), text.replace(" ", "\n"), fill="black", font=font,
                                        anchor="mm", align="center")
    return tile


def save_grid(titles: list[str], rows: list[list[Tensor]], path: Path) -> None:
    """A grid with a header row of ``titles`` and one row of (3, S, S) images per pair."""
    size = rows[0][0].shape[-1]
    tiles = [_label_tile(title, size) for title in titles] + [to_pil(image) for row in rows for image in row]
    grid = Image.new("RGB", (len(titles) * size, (len(rows) + 1) * size), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, (i % len(titles) * size, i // len(titles) * size))
    grid.save(path)
