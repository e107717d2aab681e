"""Models bundled with the package, looked up by name: ``coat_hf/pretrained/<name>/`` (config.json + model.safetensors).

The default is :data:`DEFAULT_MODEL` (``coat-celeba-128``, trained on aligned faces). Until that folder ships,
the default falls back to :data:`UNTRAINED_MODEL`, a tiny model with random weights that exercises the code
path but produces no meaningful transfer. Adding a trained model needs no code change: drop its folder here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ..configuration_coat import COATConfig
from ..modeling_coat import COATModel

PRETRAINED_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "coat-celeba-128"
UNTRAINED_MODEL = "coat-untrained-tiny"


def available_models() -> list[str]:
    """Names of the bundled models (folders here holding a config.json), sorted."""
    return sorted(p.parent.name for p in PRETRAINED_DIR.glob("*/config.json"))


def default_model() -> str:
    """:data:`DEFAULT_MODEL` when bundled, else the untrained placeholder :data:`UNTRAINED_MODEL`."""
    return DEFAULT_MODEL if DEFAULT_MODEL in available_models() else UNTRAINED_MODEL


def is_untrained(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is the bundled untrained placeholder."""
    return Path(resolve_model(name_or_path)).resolve() == PRETRAINED_DIR / UNTRAINED_MODEL


def resolve_model(name_or_path: str | os.PathLike | None = None) -> str:
    """Where to load a model from: a bundled name -> its folder; a local folder as is; anything else (a Hub id)
    unchanged, for ``from_pretrained``. ``None`` means the default model (see :func:`default_model`)."""
    if name_or_path is None:
        return str(PRETRAINED_DIR / default_model())
    name_or_path = os.fspath(name_or_path)
    if name_or_path in available_models():
        return str(PRETRAINED_DIR / name_or_path)
    return name_or_path


def make_placeholder(path: str | os.PathLike = PRETRAINED_DIR / UNTRAINED_MODEL, seed: int = 0,
                     noise_strength: float = 0.1) -> COATModel:
    """Write the untrained placeholder: the ``tiny`` preset (64 px) with seeded random weights, float32.

    The noise strengths start at 0 in StyleGAN2 and become non-zero in training; the placeholder sets them to
    ``noise_strength`` so that, like a trained model, its output depends on the noise (and on ``seed``).
    ``python -c "from coat_hf.pretrained import make_placeholder; make_placeholder()"`` regenerates it.
    """
    torch.manual_seed(seed)
    model = COATModel(COATConfig.preset("tiny")).eval()
    with torch.no_grad():
        for name, param in model.decoder.named_parameters():
            if name.endswith("noise.weight"):
                param.fill_(noise_strength)
    model.save_pretrained(path)
    return model
