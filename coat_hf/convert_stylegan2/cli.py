"""``python -m coat_hf.convert_stylegan2``: the command."""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

from ..configuration_coat import COATConfig
from .conversion import DEFAULT_PRESET, FORMATS, convert_checkpoint
from .generator import first_line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coat_hf.convert_stylegan2",
        description="Import a pretrained StyleGAN2 generator (rosinality .pt or NVlabs .pkl) as the frozen decoder "
                    "of a new COAT model.",
    )
    parser.add_argument("checkpoint", help="rosinality stylegan2-pytorch .pt or NVlabs stylegan2-ada/stylegan3 .pkl")
    parser.add_argument("--out", required=True, help="folder for the COAT model (save_pretrained format)")
    parser.add_argument("--format", choices=FORMATS, default="auto")
    parser.add_argument("--preset", choices=COATConfig.preset_names(), default=None,
                        help=f"encoder and loss settings; must match the checkpoint when given (default: "
                             f"{DEFAULT_PRESET}'s, with the checkpoint's own decoder sizes)")
    parser.add_argument("--encoder-channels", type=int, nargs="+", default=None,
                        help="widths of E's scales, shallow to deep (overrides the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the encoders' initialisation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = convert_checkpoint(args.checkpoint, args.out, args.format, args.preset, args.encoder_channels,
                                   args.seed)
    except (ValueError, pickle.UnpicklingError) as error:  # one line, exit status 2, as for usage errors
        print(f"{parser.prog}: error: {first_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    config, k = model.config, model.num_modulation_layers
    print(f"Imported a {config.image_size} px StyleGAN2 decoder (widths {config.decoder_channels}, "
          f"{config.style_dim}-d styles, K = {k} modulation layers, n in 0..{k})")
    print(f"COAT model: {args.out}\nTrain the encoders: python training/train.py --config "
          f"{Path(args.out) / 'train_config.yaml'} --data_dir /path/to/category")

