"""The teachers of one run, built once on first use and shared by whoever needs them.

The pipeline makes one :class:`Teachers` and hands it to the datamanager (CLIP features,
relevancy and DINO targets) and to the model (text the viewer asks about). A teacher is built
only when first used: a reloaded run (ns-eval, ns-render, ns-viewer) reads its text features
from the checkpoint and builds CLIP only to score new text.
"""

from __future__ import annotations

from typing import Optional

from ovs3d_nerfstudio.teachers.base import ClipTeacher, DenseTeacher
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig


class Teachers:
    """A CLIP-like and a DINO-like teacher, each built from its config on first access."""

    def __init__(self, clip: ClipTeacherConfig, dino: DinoTeacherConfig, device: str):
        self.clip_config = clip
        self.dino_config = dino
        self.device = str(device)
        self._clip: Optional[ClipTeacher] = None
        self._dino: Optional[DenseTeacher] = None

    @property
    def clip(self) -> ClipTeacher:
        if self._clip is None:
            self._clip = self.clip_config.setup(device=self.device)
        return self._clip

    @property
    def dino(self) -> DenseTeacher:
        if self._dino is None:
            self._dino = self.dino_config.setup(device=self.device)
        return self._dino

    @property
    def clip_is_built(self) -> bool:
        return self._clip is not None
