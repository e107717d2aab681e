"""Registering COAT with transformers when transformers' registries load, not at ``import coat_hf``.

``import coat_hf`` stays light (no torch, no transformers modeling code, which also imports accelerate when
installed), yet ``import coat_hf`` followed by ``AutoConfig``/``AutoModel``/``AutoImageProcessor.from_pretrained
(coat_folder)`` or ``pipeline("coat-appearance-transfer")`` finds COAT. Each registration pairs a transformers module (the
registry) with the coat_hf module holding the class to register, and runs as soon as both are fully
imported: at once for those already imported, else from a finder on ``sys.meta_path`` that notices the
end of their import. When the registry finishes first, the coat_hf module is imported then; when the
coat_hf module is still being imported at that moment (it imports the registry itself), registration
waits for it to finish.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def _register_config() -> None:
    from transformers import AutoConfig

    from .configuration_coat import COATConfig

    AutoConfig.register(COATConfig.model_type, COATConfig, exist_ok=True)


def _register_model() -> None:
    from transformers import AutoModel

    from .configuration_coat import COATConfig
    from .modeling_coat import COATModel

    AutoModel.register(COATConfig, COATModel, exist_ok=True)


def _register_image_processor() -> None:
    from transformers import AutoImageProcessor

    from .configuration_coat import COATConfig
    from .image_processing_coat import COATImageProcessor

    # One implementation (PIL and NumPy, no torchvision needed) for both backends transformers may ask for.
    AutoImageProcessor.register(COATConfig, image_processor_classes={"pil": COATImageProcessor,
                                                                     "torchvision": COATImageProcessor}, exist_ok=True)


def _register_pipeline() -> None:
    from .pipeline_coat import register_pipeline

    register_pipeline()


REGISTRATIONS: tuple[tuple[str, str, Callable[[], None]], ...] = (
    # (transformers registry module, coat_hf module with the class, registration)
    ("transformers.models.auto.configuration_auto", "coat_hf.configuration_coat", _register_config),
    ("transformers.models.auto.modeling_auto", "coat_hf.modeling_coat", _register_model),
    ("transformers.models.auto.image_processing_auto", "coat_hf.image_processing_coat", _register_image_processor),
    ("transformers.pipelines", "coat_hf.pipeline_coat", _register_pipeline),
)

_imported: set[str] = set()  # modules of REGISTRATIONS known to be fully imported
_done: set[Callable[[], None]] = set()


def _loaded(name: str) -> bool:
    return name in _imported or (name in sys.modules and not name.startswith("coat_hf."))


def _on_imported(name: str) -> None:
    """``name`` finished importing: run the registrations it completes."""
    _imported.add(name)
    for registry, module, register in REGISTRATIONS:
        if register in _done or name not in (registry, module):
            continue
        if name == registry and module in sys.modules and module not in _imported:
            continue  # the coat_hf module is mid-import; its own completion registers
        if name == module and not _loaded(registry):
            continue  # the registry is not used yet; its import registers
        _done.add(register)
        register()


class _RegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the modules of :data:`REGISTRATIONS`, it wraps the ``exec_module`` of the
    loader that the other finders return, so that :func:`_on_imported` runs when the module has executed."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname not in {name for entry in REGISTRATIONS for name in entry[:2]} or fullname in _imported:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            try:
                exec_module(module)
            finally:
                del loader.exec_module  # back to the loader's own method
            _on_imported(fullname)

        loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Register now with the registries already imported, and watch for the others (idempotent)."""
    if any(isinstance(finder, _RegistrationFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _RegistrationFinder())
    for registry, _, _ in REGISTRATIONS:
        if registry in sys.modules:
            _on_imported(registry)
