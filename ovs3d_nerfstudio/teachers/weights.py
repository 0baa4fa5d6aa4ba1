"""Weights of the built-in teachers: an explicit file or seeded random weights, and their identity.

A teacher's ``identity`` is part of the feature-cache key, so it must change whenever the
weights can: a file is named by its resolved path, size and modification time, random weights
by the tag alone (they are always initialised from the same seed).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Tuple

import torch

from ovs3d_nerfstudio.teachers.base import TeacherError

RANDOM_WEIGHTS = "random"
"""Pretrained tag meaning "untrained, seeded weights"; for tests and benchmarks only."""

_RANDOM_SEED = 0
"""Seed for random weights, so that one identity always means one set of weights."""


def weights_file(path: Path, kind: str) -> Tuple[Path, str]:
    """The checkpoint at ``path`` (resolved) and its identity; ``kind`` names the teacher in the error."""
    checkpoint = Path(path).expanduser().resolve()
    if not checkpoint.is_file():
        raise TeacherError(f"{kind} weights file '{checkpoint}' does not exist.")
    stat = checkpoint.stat()
    return checkpoint, f"{checkpoint}:{stat.st_size}:{int(stat.st_mtime)}"


@contextmanager
def seeded_initialisation() -> Iterator[None]:
    """Models built inside start from the same random weights every time; the caller's random
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        yield
