"""``python -m coat_hf.evaluation --data DIR --out DIR [--model NAME|PATH] [--masks DIR]``: see ``runner.py``.

User errors (a missing folder, too few images, a model that does not load, missing weights) print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ..pretrained import available_models, default_model
from .runner import EvaluationConfig, run_evaluation

PROG = "python -m coat_hf.evaluation"


def _int_list(text: str) -> list[int]:
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> EvaluationConfig:
    defaults = EvaluationConfig(data="", out="")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare COAT (over n), latent-swap, warp, color-transfer and the content/style bounds on "
        "seeded content/style pairs of an image folder; writes results.json, results.md, tradeoff.png, grid.png.",
    )
    parser.add_argument("--model", metavar="NAME|PATH",
                        help=f"bundled model name ({', '.join(available_models())}), model folder or Hub id "
                        f"(default: {default_model()})")
    parser.add_argument("--data", required=True,
                        help="image folder, class sub-folders included (one with images/ and masks/ reads both)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--masks", help="object masks, same file names as the images (in the same class sub-folders "
                        "or directly in it): appearance is measured on the object")
    parser.add_argument("--include", help="only files matching these globs, e.g. 'horse28[1-9]*,horse29*,horse300*'")
    parser.add_argument("--holdout-last", type=int, default=defaults.holdout_last,
                        help="only the last N files in sorted order (those training held out)")
    parser.add_argument("--num-pairs", type=int, default=defaults.num_pairs)
    parser.add_argument("--num-reconstruction", type=int, default=defaults.num_reconstruction,
                        help="images used as both content and style for PSNR/LPIPS")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--n", dest="n_values", type=_int_list,
                        help="COAT's n values, e.g. 0,3,6,9,12 (default: every n from 0 to K)")
    parser.add_argument("--swap-n", type=int, help="n of the latent-swap baseline (default: the model's default_n)")
    parser.add_argument("--warp-scale", type=int, default=defaults.warp_scale,
                        help="scale of E whose features the warp matches (0 = finest)")
    parser.add_argument("--alignment", help="alignment rule of the COAT sweep: mutual, nearest or soft (default: the "
                        "model's own)")
    parser.add_argument("--color-match", action="store_true",
                        help="also the COAT sweep with the style's colours matched afterwards (Reinhard in Lab, the "
                        "pipeline's color_match=True): rows 'coat n=... + color match'")
    parser.add_argument("--grid-pairs", type=int, default=defaults.grid_pairs, help="pairs shown in grid.png")
    parser.add_argument("--grid-size", type=int, default=defaults.grid_size, help="VGG hypercolumn grid side")
    parser.add_argument("--structure-grid", type=int, default=defaults.structure_grid,
                        help="grid side of the self-similarity matrices")
    parser.add_argument("--num-projections", type=int, default=defaults.num_projections,
                        help="random directions of the sliced Wasserstein distance of VGG features")
    parser.add_argument("--lab-projections", type=int, default=defaults.lab_projections,
                        help="random directions of the sliced Wasserstein distance of Lab colours")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 gives steadier latencies on a shared CPU)")
    return EvaluationConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    config = parse_args(argv)
    hf_logging.disable_progress_bar()  # transformers' weight-loading bar; ours counts pairs
    try:
        results = run_evaluation(config)
    except (OSError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {config.out}/results.json, results.md, tradeoff.png, grid.png "
          f"({results['seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
