"""Training COAT: arguments, data, objective, discriminator, the loop and weight averaging, one module each.

    python training/train.py --config training/configs/small.yaml --data_dir ../shared/data/celeba/train
    accelerate launch training/train.py --config training/configs/coat-celeba-128-gpu.yaml --data_dir ...
    python -m coat_hf.training.averaging --models BEFORE FINE_TUNED --weights 0.3 0.7 --output_dir OUT

``main`` is the command: bad input (a missing or empty data folder, a batch larger than the data,
non-positive step counts or learning rate, unknown config keys) ends with one line and exit status 2,
before any model is built.
"""

from __future__ import annotations

import sys

from .arguments import RunConfig, TrainingArguments, parse_arguments
from .data import DataOptions
from .objective import COATTrainingObjective, ObjectiveConfig

__all__ = ["COATTrainingObjective", "DataOptions", "ObjectiveConfig", "RunConfig", "TrainingArguments", "main",
           "parse_arguments"]


def main(argv: list[str] | None = None) -> None:
    from .trainer import Trainer

    try:
        config = parse_arguments(argv)
        trainer = Trainer(config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    trainer.train()
