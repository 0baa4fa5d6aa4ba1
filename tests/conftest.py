"""Shared fixtures: tiny CLIP and DINO teachers that build in well under a second, offline.

The teachers are session-scoped because they are frozen; tests that need a different
configuration take the ``*_config`` fixture (a fresh config each time) and build their own.
"""

from pathlib import Path

import pytest

from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig

TINY_CLIP_JSON = Path(__file__).parent / "assets" / "ovs3d-tiny-clip.json"
"""A 1-layer open_clip architecture (32 px images, 8 px patches, 16-d embeddings, real tokenizer)."""


def make_tiny_clip_config() -> ClipTeacherConfig:
    return ClipTeacherConfig(
        model_name=TINY_CLIP_JSON.stem, pretrained="random", model_config_path=TINY_CLIP_JSON, batch_size=4
    )


def make_tiny_dino_config() -> DinoTeacherConfig:
    return DinoTeacherConfig(pretrained="random", depth=1, embed_dim=32, num_heads=2)


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
    from tiny_run import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("tiny_run"))
