"""rosinality ``stylegan2-pytorch`` ``.pt`` checkpoints: ``g_ema`` (the generator's state dict, under the names
COAT's decoder uses) and, for converted official models, ``latent_avg``."""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .generator import ImportedGenerator, _require, first_line, mean_latent


def rosinality_to_coat(g_ema: Mapping[str, Tensor], latent_avg: Tensor | None = None, mapping_lr_mul: float = 0.01,
                       num_samples: int = 10_000, seed: int = 0) -> ImportedGenerator:
    """A rosinality ``Generator`` state dict -> :class:`ImportedGenerator` (the synthesis names are COAT's).

    Without ``latent_avg`` the average latent is estimated from the mapping network ``style.{i}``
    (:func:`mean_latent`, rosinality's default ``lr_mlp`` of 0.01 unless ``mapping_lr_mul`` says otherwise).
    """
    layout = "rosinality"
    const = _require(g_ema, "input.input", layout)  # (1, C, 4, 4)
    style_dim = _require(g_ema, "conv1.conv.modulation.weight", layout).shape[1]
    num_rgbs = len({m.group(1) for k in g_ema if (m := re.match(r"to_rgbs\.(\d+)\.", k))})
    channels = [const.shape[1]] + [
        _require(g_ema, f"to_rgbs.{k}.conv.weight", layout).shape[2] for k in range(num_rgbs)
    ]
    if latent_avg is None:
        indices = sorted(int(m.group(1)) for k in g_ema if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
        if not indices:
            raise ValueError("the checkpoint has neither latent_avg nor the mapping network (style.*) to compute it")
        layers = [(g_ema[f"style.{i}.weight"], _require(g_ema, f"style.{i}.bias", layout)) for i in indices]
        latent_avg = mean_latent(layers, mapping_lr_mul, num_samples, seed)
    state = {k: v for k, v in g_ema.items() if not k.startswith("style.")}
    return ImportedGenerator(state, latent_avg.squeeze(0).float(), 4 * 2**num_rgbs, style_dim, channels, layout)


def read_rosinality_checkpoint(path: str | Path, **kwargs: Any) -> ImportedGenerator:
    """A rosinality ``.pt`` (``g_ema`` [+ ``latent_avg``], or a bare generator state dict), loaded with
    ``weights_only=True`` (``argparse.Namespace`` training args allowed). ``kwargs`` go to
    :func:`rosinality_to_coat`."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} holds more than tensors and plain containers, so it is not read: {error}") from error
    except (RuntimeError, EOFError, OSError) as error:  # torch's reader on a truncated or empty file
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or corrupt): {first_line(error)}"
                         ) from error
    if isinstance(checkpoint, Mapping) and "g_ema" in checkpoint:
        return rosinality_to_coat(checkpoint["g_ema"], checkpoint.get("latent_avg"), **kwargs)
    if isinstance(checkpoint, Mapping) and "input.input" in checkpoint:
        return rosinality_to_coat(checkpoint, **kwargs)
    keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ValueError(f"{path} is not a rosinality StyleGAN2 checkpoint (expected a 'g_ema' entry; found {keys})")
