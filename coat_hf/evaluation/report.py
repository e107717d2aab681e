"""Writing the evaluation's outputs: ``results.json``, ``results.md``, ``tradeoff.png`` and ``grid.png``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..image_io import to_pil

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (key, column title, number format) of the Markdown table, in order.
TRANSFER_COLUMNS = (
    ("structure_distance", "structure dist. ↓", "{:.3f}"),
    ("swd_vgg", "SWD VGG ↓", "{:.3f}"),
    ("swd_lab", "SWD Lab ↓", "{:.2f}"),
    ("local_color", "local colour ratio ↓", "{:.3f}"),
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


LABEL_SPACING_PX = 24
"""COAT's n labels closer than this (in pixels of the saved plot) to an already placed label are left out."""


def _label_curve(ax: Any, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Label the points of a curve without piling labels up: both ends always, each with a leader line on the side
    away from the other end (so neither label sits by the wrong end, whichever way the curve runs); a middle point
    only when it lies :data:`LABEL_SPACING_PX` from every labelled point."""
    pixels = ax.transData.transform(list(zip(xs, ys)))
    last = len(xs) - 1
    order = [0, last, *range(1, last)] if last > 0 else [0]
    placed: list[Any] = []
    for i in order:
        if placed and i not in (0, last) and min(
                ((pixels[i] - p) ** 2).sum() ** 0.5 for p in placed) < LABEL_SPACING_PX:
            continue
        placement: dict[str, Any] = {"xytext": (8, 6)}
        if i in (0, last):  # along the direction from the other end to this one; fixed opposite sides if they meet
            away = pixels[i] - pixels[last - i]
            length = float((away ** 2).sum() ** 0.5)
            dx, dy = away / length if length >= 1 else ((-1.0, 0.5) if i == 0 else (1.0, -0.5))
            placement = {"xytext": (22 * dx, 22 * dy), "ha": "right" if dx < 0 else "left",
                         "va": "top" if dy < 0 else "bottom", "arrowprops": dict(arrowstyle="-", lw=0.6, color="0.4")}
        ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", fontsize=8, **placement)
        placed.append(pixels[i])


SWEEP_STYLES = (("coat", "-"), ("coat + color match", "--"))
"""The method families drawn as curves over n, and their line styles."""


def plot_tradeoff(results: dict[str, Any], path: Path) -> Figure:
    """Structure distance against each appearance distance: COAT as a curve over n (points coloured by n, labels
    thinned where they would overlap; the colour-matched sweep, when evaluated, as a dashed curve), other methods as
    points. Saves the figure to ``path`` and returns it."""
    from matplotlib.figure import Figure  # the [eval] extra

    figure = Figure(figsize=(11, 4.5), layout="constrained", dpi=120)
    axes = figure.subplots(1, 2)
    methods = results["methods"]
    sweeps = {family: sorted((m for m in methods if m["family"] == family), key=lambda m: m["n"])
              for family, _ in SWEEP_STYLES}
    coat = sweeps["coat"]
    curves = []
    for ax, (key, title, _) in zip(axes, TRANSFER_COLUMNS[1:]):
        for family, line in SWEEP_STYLES:
            if not sweeps[family]:
                continue
            xs = [m["transfer"]["structure_distance"]["mean"] for m in sweeps[family]]
            ys = [m["transfer"][key]["mean"] for m in sweeps[family]]
            ax.plot(xs, ys, line, color="black", lw=1, label=f"{family} (over n)", zorder=1)
            dots = ax.scatter(xs, ys, c=[m["n"] for m in sweeps[family]], cmap="viridis", s=30, zorder=2,
                              edgecolors="black", linewidths=0.5)
            if family == "coat":
                curves.append((ax, xs, ys))
        for m in methods:
            if m["family"] in sweeps:
                continue
            x, y = m["transfer"]["structure_distance"]["mean"], m["transfer"][key]["mean"]
            ax.plot([x], [y], "s", label=m["name"])
        ax.set_xlabel("structure distance to content ↓")
        ax.set_ylabel(f"{title.removesuffix(' ↓')} to style ↓")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if any(sweeps.values()):
        figure.colorbar(dots, ax=axes, label="coat's n (0 = most style)", shrink=0.8)
    figure.suptitle(f"Structure kept vs appearance taken ({len(results['pairs'])} pairs)")
    figure.draw_without_rendering()  # final axes limits and layout, so label spacing is measured as saved
    for ax, xs, ys in curves:
        _label_curve(ax, xs, ys, [f"n={m['n']}" for m in coat])
    figure.savefig(path)
    return figure


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
