"""The staged training schedule of 3D-OVS (Appendix A.3), in one ``ns-train`` run.

1. reconstruction: density, appearance and RGB only (the paper trains a TensoRF first);
2. segmentation, frozen: density and appearance frozen, selection volume and CLIP head
   trained (lr 0.02 for volumes, 1e-4 for MLPs);
3. segmentation, joint: appearance and RGB head unfrozen with the RGB loss added
   (lr 5e-3 / 5e-5).

Segmentation learning rates decay exponentially to ``decay`` x over the whole
segmentation stage (TensoRF's per-iteration decay, which the official code inherits).
Everything is a pure function of the global step, so resuming a checkpoint lands in the
right phase with the right learning rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Dict, Tuple


class Phase(str, Enum):
    RECONSTRUCTION = "reconstruction"
    SEGMENTATION_FROZEN = "segmentation-frozen"
    SEGMENTATION_JOINT = "segmentation-joint"


VOLUME_GROUPS: Tuple[str, ...] = ("density", "appearance", "selection", "proposal_networks")
"""Parameter groups that are spatial volumes (hash grids); the rest are MLP heads."""

TRAINABLE: Dict[Phase, Tuple[str, ...]] = {
    Phase.RECONSTRUCTION: ("proposal_networks", "density", "appearance", "rgb_head"),
    Phase.SEGMENTATION_FROZEN: ("selection", "clip_head"),
    Phase.SEGMENTATION_JOINT: ("selection", "clip_head", "appearance", "rgb_head"),
}


@dataclass
class ScheduleConfig:
    """Phase lengths and learning rates. Defaults are the paper's (Appendix A.3)."""

    reconstruction_steps: int = 30000
    """Steps of RGB-only reconstruction before segmentation (official: TensoRF, 30k)."""
    frozen_steps: int = 5000
    """Segmentation phase 1: density and appearance frozen."""
    joint_steps: int = 10000
    """Segmentation phase 2: appearance and RGB head unfrozen, RGB loss added."""
    reconstruction_lr: float = 1e-2
    """Learning rate of every group during reconstruction (nerfacto's)."""
    reconstruction_lr_final: float = 1e-3
    """Reconstruction learning rate at the end of the phase (exponential decay)."""
    frozen_lr_volume: float = 0.02
    """Phase 1 learning rate of volumes (hash grids)."""
    frozen_lr_mlp: float = 1e-4
    """Phase 1 learning rate of MLP heads."""
    joint_lr_volume: float = 5e-3
    """Phase 2 learning rate of volumes."""
    joint_lr_mlp: float = 5e-5
    """Phase 2 learning rate of MLP heads."""
    segmentation_decay: float = 0.1
    """Learning rates reach this factor at the end of segmentation (exponential decay)."""

    @property
    def total_steps(self) -> int:
        return self.reconstruction_steps + self.frozen_steps + self.joint_steps

    def phase(self, step: int) -> Phase:
        if step < self.reconstruction_steps:
            return Phase.RECONSTRUCTION
        if step < self.reconstruction_steps + self.frozen_steps:
            return Phase.SEGMENTATION_FROZEN
        return Phase.SEGMENTATION_JOINT

    def learning_rate(self, group: str, step: int) -> float:
        """Learning rate of a parameter group at a step; 0 when the group is frozen."""
        phase = self.phase(step)
        if group not in TRAINABLE[phase]:
            return 0.0
        if phase is Phase.RECONSTRUCTION:
            progress = step / max(self.reconstruction_steps, 1)
            return self.reconstruction_lr * (self.reconstruction_lr_final / self.reconstruction_lr) ** progress
        is_volume = group in VOLUME_GROUPS
        if phase is Phase.SEGMENTATION_FROZEN:
            base = self.frozen_lr_volume if is_volume else self.frozen_lr_mlp
        else:
            base = self.joint_lr_volume if is_volume else self.joint_lr_mlp
        progress = (step - self.reconstruction_steps) / max(self.frozen_steps + self.joint_steps, 1)
        return base * self.segmentation_decay ** min(progress, 1.0)
