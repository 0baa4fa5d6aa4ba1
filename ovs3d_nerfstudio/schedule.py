"""The staged training schedule of 3D-OVS (Appendix A.3), in one ``ns-train`` run.

1. reconstruction: density, appearance and RGB only (the paper trains a TensoRF first);
2. segmentation, frozen: density and appearance frozen, selection volume and CLIP head
   trained (lr 0.02 for volumes, 1e-4 for MLPs);
3. segmentation, joint: appearance and RGB head unfrozen with the RGB loss added and
   fine-tuned at lr 5e-3 / 5e-5; the selection volume and CLIP head keep their rates (the
   paper fine-tunes "the shared volume and the RGB branch" at those rates, and the official
   code gives only the appearance volume and RGB head the fine-tuning rates).

Segmentation learning rates decay exponentially to ``decay`` x over the whole
segmentation stage (TensoRF's per-iteration decay, which the official code inherits).
Everything is a pure function of the global step, so resuming a checkpoint lands in the
right phase with the right learning rates. Each parameter group's optimizer gets its rates
from a nerfstudio scheduler, :class:`PhaseSchedulerConfig`, set in the method's optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import tyro
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig

from ovs3d_nerfstudio.errors import ConfigError


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
    """Phase 2 learning rate of the appearance volume (fine-tuned)."""
    joint_lr_mlp: float = 5e-5
    """Phase 2 learning rate of the RGB head (fine-tuned)."""
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

    def trainable(self, phase: Phase) -> Tuple[str, ...]:
        """The parameter groups trained in ``phase`` (the model freezes the others)."""
        return TRAINABLE[phase]

    def is_volume(self, group: str) -> bool:
        """Whether a group gets the volumes' segmentation rates rather than the MLPs'."""
        return group in VOLUME_GROUPS

    def learning_rate(self, group: str, step: int) -> float:
        """Learning rate of a parameter group at a step; 0 when the group is frozen."""
        phase = self.phase(step)
        if group not in self.trainable(phase):
            return 0.0
        if phase is Phase.RECONSTRUCTION:
            return self.reconstruction_learning_rate(group, step)
        return self.segmentation_learning_rate(group, step)

    def reconstruction_learning_rate(self, group: str, step: int) -> float:
        """Every group's reconstruction rate: ``reconstruction_lr`` decaying exponentially to ``reconstruction_lr_final``."""
        progress = step / max(self.reconstruction_steps, 1)
        return self.reconstruction_lr * (self.reconstruction_lr_final / self.reconstruction_lr) ** progress

    def segmentation_learning_rate(self, group: str, step: int) -> float:
        """A trained group's rate in segmentation: its phase's base rate, decayed over the whole stage."""
        is_volume = self.is_volume(group)
        if group in self.trainable(Phase.SEGMENTATION_FROZEN):
            base = self.frozen_lr_volume if is_volume else self.frozen_lr_mlp
        else:  # unfrozen for fine-tuning in the joint phase
            base = self.joint_lr_volume if is_volume else self.joint_lr_mlp
        progress = (step - self.reconstruction_steps) / max(self.frozen_steps + self.joint_steps, 1)
        return base * self.segmentation_decay ** min(progress, 1.0)


@dataclass
class PhaseSchedulerConfig(SchedulerConfig):
    """One parameter group's learning rate through the phases: :meth:`ScheduleConfig.learning_rate`."""

    _target: Type = field(default_factory=lambda: PhaseScheduler)
    group: str = ""
    """Parameter group (a key of ``Ovs3dModel.get_param_groups``)."""
    schedule: tyro.conf.Suppress[Optional[ScheduleConfig]] = None
    """The model's schedule (``--pipeline.model.schedule.*``), handed over by
    ``Ovs3dTrainerConfig.resolved`` when the trainer is made: one schedule, not a copy per group."""


class PhaseLR(LambdaLR):
    """``LambdaLR`` at the schedule's rate, movable to any trainer step (:meth:`move_to`)."""

    def move_to(self, step: int) -> None:
        """The rates of ``step``, as if the scheduler had been stepped ``step`` times."""
        self.last_epoch = step
        rates = [base * factor(step) for base, factor in zip(self.base_lrs, self.lr_lambdas)]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        self._last_lr = rates


class PhaseScheduler(Scheduler):
    """A :class:`PhaseLR` whose factor at step s is the schedule's rate divided by the optimizer's
    initial one. nerfstudio steps it after each optimizer step; the model also moves it to the
    trainer's step before each iteration (:func:`align_phase_schedulers`), so the rates follow the
    same step as the model's phase even where nerfstudio does not step it (a step the
    mixed-precision scaler skipped) or restores no state for it (a resumed checkpoint without
    scheduler state, ``--load-scheduler False``)."""

    config: PhaseSchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> PhaseLR:
        schedule, group = self.config.schedule, self.config.group
        if schedule is None:
            raise ConfigError(f"the '{group}' phase scheduler has no schedule: set up the trainer with Ovs3dTrainerConfig")
        if lr_init <= 0:
            raise ConfigError(f"the '{group}' optimizer needs a positive lr for the phase scheduler to scale, not {lr_init}")
        return PhaseLR(optimizer, lambda step: schedule.learning_rate(group, step) / lr_init)


def align_phase_schedulers(schedulers: Mapping[str, Any], step: int) -> List[str]:
    """Moves every :class:`PhaseLR` that is not at ``step`` there; returns the groups moved."""
    moved = [group for group, scheduler in schedulers.items() if isinstance(scheduler, PhaseLR) and scheduler.last_epoch != step]
    for group in moved:
        schedulers[group].move_to(step)
    return moved


def reconcile_iterations(
    schedule: ScheduleConfig, start_step: int, max_num_iterations: Optional[int]
) -> Tuple[int, str]:
    """The number of steps ``ns-train`` should run, and a message when it differs or falls short.

    nerfstudio runs ``max_num_iterations`` steps from ``start_step`` (a resumed run continues
    from its checkpoint). Left at None, it follows the schedule, so changing a phase length is
    enough; given, it is kept as given, with a warning when training would stop before the
    schedule ends.
    """
    steps_left = max(schedule.total_steps - start_step, 0)
    if max_num_iterations is None:
        return steps_left, (
            f"training to the end of the schedule: {steps_left} steps from step {start_step} "
            f"(reconstruction {schedule.reconstruction_steps} + frozen {schedule.frozen_steps} "
            f"+ joint {schedule.joint_steps})"
        )
    end = start_step + max_num_iterations
    if end < schedule.total_steps:
        return max_num_iterations, (
            f"[yellow]--max-num-iterations {max_num_iterations} stops training at step {end}, in phase "
            f"'{schedule.phase(end - 1).value}', before the schedule's end at step {schedule.total_steps}. "
            f"Pass --max-num-iterations {steps_left} to run the whole schedule."
        )
    return max_num_iterations, ""
