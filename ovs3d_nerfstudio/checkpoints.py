"""Keeps ovs3d checkpoints loadable by ns-eval / ns-render / ns-viewer under torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True``; nerfstudio's checkpoints can hold numpy
scalars (e.g. learning rates computed with numpy in a scheduler's state), which that
unpickler rejects. Allow-listing these plain-data numpy types when an ovs3d pipeline is built
(before nerfstudio loads its checkpoint; ``process.py``) means users never need
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch


def register_checkpoint_globals() -> None:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 loads everything anyway
        return
    try:  # numpy >= 2 moved the module; importing the old path there warns
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    scalar = multiarray.scalar
    dtype_classes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    add_safe_globals([scalar, np.dtype, *dtype_classes])
