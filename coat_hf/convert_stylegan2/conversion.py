"""Checkpoint -> COAT model folder: read either format, build the COAT config around the generator, load the
decoder and write ``train_config.yaml`` from the paper-256 recipe shipped beside this module."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from ..configuration_coat import COATConfig
from ..modeling_coat import COATModel
from .generator import ImportedGenerator
from .nvlabs import read_nvlabs_pickle
from .rosinality import read_rosinality_checkpoint

logger = logging.getLogger(__name__)

FORMATS = ("auto", "rosinality", "nvlabs")
DEFAULT_PRESET = "paper-256"
PAPER_TRAIN_CONFIG = Path(__file__).resolve().parent / "paper-256.yaml"
"""The paper-scale training recipe (package data); ``train_config.yaml`` starts from it."""
_ARCHITECTURE_FIELDS = ("image_size", "in_channels", "encoder_channels", "style_dim", "decoder_channels",
                        "blur_kernel", "style_scales")


def read_stylegan2_checkpoint(path: str | Path, format: str = "auto", **kwargs: Any) -> ImportedGenerator:
    """Either format; ``auto`` tells them apart by content (``torch.save`` archive or pickle of networks)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if format == "auto":
        format = "rosinality" if zipfile.is_zipfile(path) or path.suffix in (".pt", ".pth") else "nvlabs"
    reader = read_rosinality_checkpoint if format == "rosinality" else read_nvlabs_pickle
    return reader(path, **kwargs)


def coat_config_for(generator: ImportedGenerator, preset: str | None = None,
                    encoder_channels: Sequence[int] | None = None, **overrides: Any) -> COATConfig:
    """A :class:`COATConfig` whose decoder is ``generator``: the preset's encoder and loss settings
    (``paper-256`` when ``preset`` is None) with the checkpoint's size, widths and style dimension.

    An explicitly named ``preset`` must agree with the checkpoint (else ValueError).
    """
    decoder = dict(image_size=generator.image_size, style_dim=generator.style_dim,
                   decoder_channels=list(generator.channels))
    base = COATConfig.preset(preset or DEFAULT_PRESET)
    if preset is not None:
        mismatched = [f"{key} {getattr(base, key)} (checkpoint: {value})"
                      for key, value in decoder.items() if getattr(base, key) != value]
        if mismatched:
            raise ValueError(f"preset {preset!r} does not fit this StyleGAN2 checkpoint: " + "; ".join(mismatched)
                             + ". Leave the preset out to use the checkpoint's own sizes.")
    if encoder_channels is not None:
        decoder["encoder_channels"] = list(encoder_channels)
    default_n = min(base.default_n, generator.num_modulation_layers)
    return COATConfig.preset(preset or DEFAULT_PRESET, **{"default_n": default_n, **decoder, **overrides})


@torch.no_grad()
def load_decoder(model: COATModel, generator: ImportedGenerator) -> None:
    """Copy ``generator`` into ``model.decoder`` and ``model.latent_avg``; ValueError on any mismatch."""
    config = model.config
    expected = dict(image_size=generator.image_size, style_dim=generator.style_dim,
                    decoder_channels=list(generator.channels))
    mismatched = [f"{key}: checkpoint {value}, model {getattr(config, key)}"
                  for key, value in expected.items() if getattr(config, key) != value]
    if mismatched:
        raise ValueError("the StyleGAN2 generator does not fit this COAT model (" + "; ".join(mismatched)
                         + "); build the model from coat_config_for(generator)")
    target = model.decoder.state_dict()
    weights = {k: v for k, v in generator.decoder_state.items() if not k.endswith(".kernel")}
    unexpected = sorted(set(generator.decoder_state) - set(target))
    missing = sorted(k for k in target if k not in weights and not k.endswith(".kernel"))
    if missing and all(k.startswith("noises.") for k in missing):
        logger.warning("the checkpoint stores no fixed noise maps; noise_mode='const' will use random ones")
        missing = []
    if unexpected or missing:
        raise ValueError(f"the generator's weights do not follow the StyleGAN2 layout: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    for name, value in generator.decoder_state.items():
        if value.shape != target[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)}, decoder {tuple(target[name].shape)}")
        if name.endswith(".kernel") and not torch.allclose(value.float(), target[name], atol=1e-6):
            raise ValueError(f"{name}: the generator uses an FIR filter other than config.blur_kernel "
                             f"{config.blur_kernel}")
    model.decoder.load_state_dict({**target, **weights})
    model.latent_avg.copy_(generator.latent_avg)


def write_train_config(model_dir: str | Path, base: str | Path | None = PAPER_TRAIN_CONFIG) -> Path:
    """``model_dir/train_config.yaml`` for ``training/train.py``: ``base``'s recipe (the paper-256 one)
    starting from ``model_dir`` with only the encoders trained."""
    model_dir = Path(model_dir)
    values = {}
    if base is not None and Path(base).is_file():
        values = yaml.safe_load(Path(base).read_text()) or {}
    else:
        logger.warning("no training recipe at %s: train_config.yaml holds only the fields this converter sets", base)
    values.pop("model_preset", None)
    overrides = {k: v for k, v in (values.pop("model_overrides", None) or {}).items() if k not in _ARCHITECTURE_FIELDS}
    values = {"init_from": str(model_dir.resolve()), "train_modules": "encoders",
              **({"model_overrides": overrides} if overrides else {}),
              **{k: v for k, v in values.items() if k not in ("init_from", "train_modules")},
              "output_dir": f"runs/{model_dir.name}"}
    path = model_dir / "train_config.yaml"
    path.write_text(
        "# COAT on an imported StyleGAN2 decoder: E and E_mod train, the decoder stays frozen (the paper's setting).\n"
        f"#   python training/train.py --config {path} --data_dir /path/to/category\n"
        + yaml.safe_dump(values, sort_keys=False)
    )
    return path


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, format: str = "auto", preset: str | None = None,
                       encoder_channels: Sequence[int] | None = None, seed: int = 0,
                       train_config_base: str | Path | None = PAPER_TRAIN_CONFIG) -> COATModel:
    """Checkpoint -> COAT model folder (random encoders seeded by ``seed``, imported decoder, w̄) and its
    ``train_config.yaml``. Returns the model."""
    generator = read_stylegan2_checkpoint(checkpoint, format, seed=seed)
    config = coat_config_for(generator, preset, encoder_channels)
    torch.manual_seed(seed)
    model = COATModel(config).eval()
    load_decoder(model, generator)
    model.save_pretrained(out_dir)
    write_train_config(out_dir, train_config_base)
    return model
