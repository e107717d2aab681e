"""coat-hf: correspondence-driven object appearance transfer (COAT, BMVC 2022) for the Hugging Face ecosystem.

``import coat_hf`` is light (it imports neither torch nor transformers): the names below load on first use,
and ``COATConfig``/``COATModel``/``COATImageProcessor`` and the ``coat-appearance-transfer`` pipeline task are
registered with transformers' Auto classes and pipeline registry as soon as transformers loads those (see
:mod:`coat_hf._registration`).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from . import _registration

__version__ = "0.1.0"

_EXPORTS = {
    "COATAppearanceTransferPipeline": "pipeline_coat",
    "COATConfig": "configuration_coat",
    "COATImageProcessor": "image_processing_coat",
    "COATModel": "modeling_coat",
    "COATOutput": "modeling_coat",
    "COATPreTrainedModel": "modeling_coat",
    "Correspondence": "correspondence",
    "align_features": "correspondence",
    "cosine_similarity": "correspondence",
    "mutual_consistency": "correspondence",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .configuration_coat import COATConfig
    from .correspondence import Correspondence, align_features, cosine_similarity, mutual_consistency
    from .image_processing_coat import COATImageProcessor
    from .modeling_coat import COATModel, COATOutput, COATPreTrainedModel
    from .pipeline_coat import COATAppearanceTransferPipeline


def __getattr__(name: str) -> Any:
    """The exported names, and the submodules (``coat_hf.pretrained``, ...), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


_registration.install()
