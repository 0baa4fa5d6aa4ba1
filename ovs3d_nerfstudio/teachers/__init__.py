"""Frozen 2D teachers distilled into the field: interfaces, configs and built-in models.

The built-in teachers are loaded on first access, so that importing the configs (which
every ``ns-*`` command does through the method entry point) does not import open_clip.
"""

import importlib
from typing import TYPE_CHECKING

from ovs3d_nerfstudio.teachers.base import (
    ClipTeacher,
    DenseTeacher,
    TeacherError,
    build_from_import_path,
    load_factory,
)
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig

if TYPE_CHECKING:
    from ovs3d_nerfstudio.teachers.dino import DinoTeacher
    from ovs3d_nerfstudio.teachers.openclip import OpenClipTeacher

_LAZY_MODULES = {
    "OpenClipTeacher": "ovs3d_nerfstudio.teachers.openclip",
    "DinoTeacher": "ovs3d_nerfstudio.teachers.dino",
}

__all__ = [
    "ClipTeacher",
    "ClipTeacherConfig",
    "DenseTeacher",
    "DinoTeacher",
    "DinoTeacherConfig",
    "OpenClipTeacher",
    "TeacherError",
    "build_from_import_path",
    "load_factory",
]


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return getattr(importlib.import_module(_LAZY_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
