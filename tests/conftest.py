"""Shared fixtures: tiny CLIP and DINO teachers that build in well under a second, offline.

The teachers are session-scoped because they are frozen; tests that need a different
configuration take the ``*_config`` fixture (a fresh config each time) and build their own.
"""

import pytest

from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig
from tiny_run import TINY_CLIP, TINY_DINO, train_tiny_run


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
