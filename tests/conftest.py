"""Shared fixtures: tiny CLIP and DINO teachers that build in well under a second, offline.

The teachers are session-scoped because they are frozen; tests that need a different
configuration take the ``*_config`` fixture (a fresh config each time) and build their own.
"""

import os
import sys
import types
from importlib.metadata import entry_points

# Until the package is reinstalled with the ``ovs3d-splat`` entry point (pyproject.toml),
# nerfstudio's method registry, read once at import, cannot find the splat method; its
# NERFSTUDIO_METHOD_CONFIGS variable names it instead, for this process and the ns-* commands
# the tests start. With the entry point installed nothing is set: the tests run what users run.
if "ovs3d-splat" not in entry_points(group="nerfstudio.method_configs").names:
    os.environ["NERFSTUDIO_METHOD_CONFIGS"] = "ovs3d-splat=ovs3d_nerfstudio.splat.config:ovs3d_splat_method"

import pytest
import torch

from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig
from tiny_run import TINY_CLIP, TINY_DINO, train_tiny_run
from tiny_splat_run import train_tiny_splat_run


class GsplatCudaCallError(RuntimeError):
    """A test reached a gsplat CUDA function on a machine without CUDA."""


def _refuse_gsplat_cuda(name: str):
    if name.startswith("__"):  # module introspection (inspect, pickle) asks for these: not a use
        raise AttributeError(name)
    raise GsplatCudaCallError(
        f"a test reached gsplat's CUDA backend ({name}) without CUDA: that starts a JIT build; render on CPU"
    )


def pytest_configure(config):
    """Without CUDA, gsplat's compiled backend is replaced by a module that refuses every use.

    gsplat imports ``gsplat.cuda._backend`` lazily, on the first CUDA call; on a machine with
    ``nvcc`` but no GPU that import starts a multi-minute build. With this stand-in in
    ``sys.modules`` such a call fails at once, naming itself.
    """
    if not torch.cuda.is_available() and "gsplat.cuda._backend" not in sys.modules:
        guard = types.ModuleType("gsplat.cuda._backend")
        guard.__getattr__ = _refuse_gsplat_cuda
        sys.modules["gsplat.cuda._backend"] = guard


def make_tiny_clip_config() -> ClipTeacherConfig:
    return ClipTeacherConfig(**TINY_CLIP, batch_size=4)


def make_tiny_dino_config() -> DinoTeacherConfig:
    return DinoTeacherConfig(**TINY_DINO)


@pytest.fixture
def tiny_clip_config() -> ClipTeacherConfig:
    return make_tiny_clip_config()


@pytest.fixture(scope="session")
def tiny_clip_teacher():
    return make_tiny_clip_config().setup()


@pytest.fixture
def tiny_dino_config() -> DinoTeacherConfig:
    return make_tiny_dino_config()


@pytest.fixture(scope="session")
def tiny_dino_teacher():
    return make_tiny_dino_config().setup()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run folder, ns-train stdout) of the shared tiny training run (see tiny_run.py)."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def tiny_splat_run(tmp_path_factory):
    """(run folder, ns-train stdout) of the shared tiny ``ovs3d-splat`` run (see tiny_splat_run.py)."""
    return train_tiny_splat_run(tmp_path_factory.mktemp("tiny_splat_run"))
