"""Models bundled with the package, looked up by name: ``coat_hf/pretrained/<name>/`` (config.json,
model.safetensors and preprocessor_config.json, the image processor).

The default is :data:`DEFAULT_MODEL` (``coat-celeba-128``, trained on aligned faces). Until that folder ships,
the default falls back to :data:`UNTRAINED_MODEL`, a tiny model with random weights that exercises the code
path but produces no meaningful transfer. Adding a trained model needs no code change: drop its folder here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


def describe_model(name: str) -> str:
    """One line on what bundled model ``name`` is, from its card (``README.md``): the second cell of the card's
    table row for ``name`` when there is one (cards shared by several models), else the first sentence of the
    card's first paragraph; Markdown emphasis and code marks are dropped."""
    card = PRETRAINED_DIR / name / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # YAML front matter
    row = re.search(rf"^\|\s*`?{re.escape(name)}`?\s*\|([^|]*)\|", text, flags=re.M)
    if row:
        summary = row.group(1)
    else:
        paragraph = next((block for block in re.split(r"\n\s*\n", text)
                          if block.strip() and not block.lstrip().startswith(("#", "|", "```"))), "")
        summary = re.split(r"(?<=[.!?])\s", " ".join(paragraph.split()), maxsplit=1)[0]
    return re.sub(r"[*`]", "", summary).strip() or "(no model card)"


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


def model_load_error(name_or_path: str | os.PathLike | None, err: Exception) -> ValueError:
    """The one-line error of a command whose ``--model`` does not load: the model, the bundled names and the
    loader's reason (transformers' pipeline wraps the loader's error, traceback and all: then its last line)."""
    lines = (str(err).strip() or type(err).__name__).splitlines()
    reason = lines[-1] if any(line.startswith("Traceback") for line in lines) else lines[0]
    return ValueError(f"--model: cannot load {os.fspath(name_or_path or default_model())!r} (bundled models: "
                      f"{', '.join(available_models())}): {reason}")


def make_placeholder(path: str | os.PathLike = PRETRAINED_DIR / UNTRAINED_MODEL, seed: int = 0,
                     noise_strength: float = 0.1) -> COATModel:
    """Write the untrained placeholder: the ``tiny`` preset (64 px) with seeded random weights, float32, and its
    image processor.

    The noise strengths start at 0 in StyleGAN2 and become non-zero in training; the placeholder sets them to
    ``noise_strength`` so that, like a trained model, its output depends on the noise (and on ``seed``).
    ``python -c "from coat_hf.pretrained import make_placeholder; make_placeholder()"`` regenerates it.
    """
    import torch

    from ..configuration_coat import COATConfig
    from ..image_processing_coat import COATImageProcessor
    from ..modeling_coat import COATModel

    torch.manual_seed(seed)
    model = COATModel(COATConfig.preset("tiny")).eval()
    with torch.no_grad():
        for name, param in model.decoder.named_parameters():
            if name.endswith("noise.weight"):
                param.fill_(noise_strength)
    model.save_pretrained(path)
    COATImageProcessor.from_model_config(model.config).save_pretrained(path)
    return model
