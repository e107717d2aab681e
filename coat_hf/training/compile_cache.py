"""Portable compile caches: ``torch.compile``'s artifacts in one file that travels to a fresh machine.

Compiling the whole objective takes minutes (about 200 s on an H100's host, 263 s for the tiny preset on a 2-core
CPU), paid again by every fresh machine, since Inductor's own caches live in the machine's temporary folder. After
the first compiled step, :func:`save_compile_cache` writes every artifact of this process (Inductor's generated
kernels and FX graphs, AOTAutograd's forward and backward graphs; ``torch.compiler.save_cache_artifacts``) to one
file; :func:`load_compile_cache`, before the next run compiles, puts them back. The run then traces the step with
Dynamo as before, but finds its graphs and kernels compiled: on the CPU the tiny objective's first step took 100 s
instead of 263 s. The artifacts fit only the same torch and Triton versions and the same kind of device; otherwise
they are ignored and the step compiles from scratch. A cache holds compiled code and pickles: load only caches you
made.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def load_compile_cache(path: str | Path) -> bool:
    """Put the artifacts saved in ``path`` into this process's compile caches; False (and a warning when the file
    exists but cannot be read) when there are none to load."""
    path = Path(path)
    if not path.is_file():
        return False
    try:  # torch returns None for a file it cannot read (another version's, a damaged one)
        loaded = torch.compiler.load_cache_artifacts(path.read_bytes()) is not None
    except (OSError, RuntimeError, ValueError) as err:
        logger.warning("compile cache %s: %s", path, err)
        loaded = False
    if not loaded:  # compiling from scratch loses nothing
        logger.warning("compile cache %s not loaded; compiling from scratch", path)
        return False
    logger.info("compile cache loaded from %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return True


def save_compile_cache(path: str | Path) -> int:
    """Write every compile artifact of this process to ``path`` (atomically: a kill leaves the previous file);
    returns the bytes written, 0 when nothing was compiled."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return 0
    data = artifacts[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    logger.info("compile cache saved to %s (%.1f MB)", path, len(data) / 1e6)
    return len(data)
