"""Weight averaging of COAT models: a model soup, or WiSE-FT's interpolation between a model and its fine-tune.

    python -m coat_hf.training.averaging --models coat_hf/pretrained/coat-celeba-128 runs/ft/final \\
        --weights 0.2 0.8 --output_dir runs/wise-0.8

θ = Σ_k w_k θ_k over models that share an architecture, with the weights normalised to sum to 1: uniform weights over
fine-tunes of one model are a "model soup" (Wortsman et al., ICML 2022); two weights between a model and its own
fine-tune are WiSE-FT (Wortsman et al., CVPR 2022), which moves along the line between them. Neither is in COAT; the
model card measures what it gives the bundled face model.

The output has the architecture of the model with the most structure codes; every other model must have the same
configuration, with its ``structure_scales`` a prefix of that one's. A structure code a model was trained without is,
for that model, the code it would start with (``StructureCode``: the output conv at zero, so the model decodes as
without it); its input conv then averages over the models that have it. Integer buffers come from the output's model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..configuration_coat import COATConfig
from ..modeling_coat import COATModel
from .arguments import EXPORT_DTYPES
from .trainer import save_model

_BOOKKEEPING = ("structure_channels", "structure_scale", "transformers_version", "dtype", "torch_dtype",
                "architectures", "_name_or_path")
"""Config fields that may differ between averaged models: the structure codes (checked as prefixes) and metadata."""

MODEL_CARD = """---
library_name: coat-hf
pipeline_tag: image-to-image
tags:
- appearance-transfer
- coat
- weight-averaging
---

# {name}

A weight average of COAT models (`python -m coat_hf.training.averaging`), θ = Σ w_k θ_k:

{sources}

The architecture is that of `{target}`. Evaluate it before use: `python -m coat_hf.evaluation --model {folder} ...`.
"""


def _architecture(config: COATConfig) -> dict:
    return {key: value for key, value in config.to_dict().items() if key not in _BOOKKEEPING}


def output_config(configs: Sequence[COATConfig], names: Sequence[str]) -> int:
    """The index of the model whose architecture the average takes (the most structure codes); a one-line
    ``ValueError`` naming the models when the others are not that architecture, less some of its codes."""
    target = max(range(len(configs)), key=lambda k: len(configs[k].structure_scales) if configs[k].structure_channels
                 else 0)
    reference = configs[target]
    for config, name in zip(configs, names):
        differ = sorted(key for key, value in _architecture(config).items()
                        if _architecture(reference).get(key) != value)
        if differ:
            raise ValueError(f"--models: {name} and {names[target]} differ in {', '.join(differ)}")
        if config.structure_channels:
            scales = config.structure_scales
            if (config.structure_channels != reference.structure_channels
                    or scales != reference.structure_scales[:len(scales)]):
                raise ValueError(f"--models: {name}'s structure codes ({config.structure_channels} channels at scales "
                                 f"{scales}) are not the first of {names[target]}'s "
                                 f"({reference.structure_channels} at {reference.structure_scales})")
    return target


def average_weights(models: Sequence[COATModel], weights: Sequence[float], names: Sequence[str] | None = None
                    ) -> COATModel:
    """Σ_k w_k θ_k of ``models`` (weights normalised to sum to 1), in float32, as a new model of the architecture
    ``output_config`` picks. The models are left unchanged."""
    names = list(names) if names is not None else [f"model {k}" for k in range(len(models))]
    if not models:
        raise ValueError("--models: give at least one model")
    if len(weights) != len(models):
        raise ValueError(f"--weights: {len(models)} models need {len(models)} weights, got {len(weights)}")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights must be non-negative with a positive sum, got {list(weights)}")
    target = output_config([m.config for m in models], names)
    averaged = COATModel(models[target].config).float().eval()
    states = [{key: value.float() for key, value in m.state_dict().items() if value.is_floating_point()}
              for m in models]
    merged = {}
    for key, value in averaged.state_dict().items():
        if not value.is_floating_point():
            merged[key] = models[target].state_dict()[key]
            continue
        total, mass = torch.zeros_like(value), 0.0
        for state, weight in zip(states, weights):
            if key in state:
                total += weight * state[key]
                mass += weight
            elif not key.startswith("structure_codes."):
                raise ValueError(f"--models: a model lacks {key}")
            elif ".reduce." not in key:  # the output conv of a code this model never had counts at zero;
                mass += weight  # its input conv averages over the models that have it
        merged[key] = total / mass if mass > 0 else states[target][key]
    averaged.load_state_dict(merged)
    return averaged


def save_average(model: COATModel, output_dir: Path, sources: Sequence[tuple[str, float]], target: str,
                 dtype: str = "float16", max_shard_size: str | None = None) -> Path:
    """``save_model`` (the training export's format) and a model card naming the sources."""
    save_model(model, output_dir, dtype, max_shard_size)
    total = sum(weight for _, weight in sources)
    (output_dir / "README.md").write_text(MODEL_CARD.format(
        name=output_dir.name, folder=output_dir, target=target,
        sources="\n".join(f"- `{name}`: w = {weight / total:.4g}" for name, weight in sources)))
    return output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coat_hf.training.averaging", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders (or hub ids) to average")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one weight per model, normalised to sum to 1 (default: uniform, a model soup)")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the averaged model is saved")
    parser.add_argument("--export_dtype", choices=EXPORT_DTYPES, default="float16")
    parser.add_argument("--export_max_shard_size", default="15MB", help="shard size, or 'none' for one file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    weights = args.weights if args.weights is not None else [1.0] * len(args.models)
    try:
        if args.output_dir.exists() and any(args.output_dir.iterdir()):
            raise ValueError(f"--output_dir {args.output_dir} is not empty; nothing is overwritten")
        models = []
        for name in args.models:
            try:
                models.append(COATModel.from_pretrained(name, dtype=torch.float32))
            except (OSError, ValueError) as err:
                reason = str(err).splitlines()[0]
                raise ValueError(f"--models: {name} does not load as a COAT model: {reason}" if Path(name).is_dir()
                                 else f"--models: {name} is not a folder, nor a model on the hub ({reason})") from None
        averaged = average_weights(models, weights, args.models)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    target = args.models[output_config([m.config for m in models], args.models)]
    shard = None if args.export_max_shard_size.lower() == "none" else args.export_max_shard_size
    save_average(averaged, args.output_dir, list(zip(args.models, weights)), target, args.export_dtype, shard)
    print(f"saved {args.output_dir}")


if __name__ == "__main__":
    main()
