"""Render each bundled model's own example pairs (``coat_hf/pretrained/<name>/examples.json``: photos shipped
inside installed packages) through the pipeline, as a user would, for the README:

    python docs/make_examples.py            # every bundled model with examples -> docs/examples-<name>.png
    python docs/make_examples.py --models coat-celeba-128 --n 0 6 12 --color-match   # -> ...-color-match.png

One row per pair: content, style, then the result at n = 0 (the most style) ... K (the content's own vectors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
from PIL import ImageOps
from transformers import pipeline

from coat_hf.pipeline_coat import TASK
from coat_hf.pretrained import available_models, is_untrained, resolve_model
from coat_hf.pretrained.examples import model_examples

CELL = 128
CAPTION = 18


def render(name: str, n_values: list[int] | None = None, seed: int = 0, color_match: bool = False) -> PIL.Image.Image:
    """The figure of model ``name``: its example pairs (rows) by content, style and each n (columns; default five
    steps from 0 to K), with the pipeline's ``color_match``."""
    pipe = pipeline(TASK, model=resolve_model(name))
    k = pipe.model.config.num_modulation_layers
    n_values = n_values or [round(i * k / 4) for i in range(5)]
    pairs = model_examples(name)
    columns = ["content", "style", *(f"n = {n}" for n in n_values)]
    figure = PIL.Image.new("RGB", (CELL * len(columns), CAPTION + CELL * len(pairs)), "white")
    draw = PIL.ImageDraw.Draw(figure)
    for col, caption in enumerate(columns):
        draw.text((col * CELL + 4, 3), caption, fill="black")
    for row, (content, style) in enumerate(pairs):
        content_image, style_image = content.load(), style.load()
        cells = [content_image, style_image]
        cells += [pipe(content_image, style_image, n=n, seed=seed, color_match=color_match)["image"]
                  for n in n_values]
        for col, image in enumerate(cells):
            figure.paste(ImageOps.fit(image, (CELL, CELL), PIL.Image.Resampling.LANCZOS),
                         (col * CELL, CAPTION + row * CELL))
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+",
                        default=[m for m in available_models() if model_examples(m) and not is_untrained(m)])
    parser.add_argument("--n", type=int, nargs="+", help="the n of each result column (default: 0 to K in 4 steps)")
    parser.add_argument("--color-match", action="store_true", help="the pipeline's color_match=True")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args()
    for name in args.models:
        path = Path(args.out) / f"examples-{name}{'-color-match' if args.color_match else ''}.png"
        render(name, args.n, color_match=args.color_match).save(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
