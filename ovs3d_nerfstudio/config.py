"""The ``ovs3d`` method specification registered with nerfstudio (entry point only).

The ``ovs3d-data`` dataparser specification lives in ``dataparser_config.py``: nerfstudio
imports dataparser entry points while ``base_datamanager`` is being imported, so that
module must not import the datamanager (this one does).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple, Type

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.plugins.types import MethodSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.model import Ovs3dModelConfig
from ovs3d_nerfstudio.pipeline import Ovs3dPipelineConfig
from ovs3d_nerfstudio.schedule import TRAINABLE, PhaseSchedulerConfig, ScheduleConfig, reconcile_iterations

CHECKPOINT_NAME = re.compile(r"step-(\d+)\.ckpt")
"""nerfstudio's checkpoint file name (``Trainer.save_checkpoint``); the number is the step."""


def checkpoint_start_step(config: TrainerConfig) -> int:
    """The step training starts from: 0, or one after the checkpoint the trainer will load
    (``--load-dir`` with ``--load-step`` or its latest checkpoint, as nerfstudio picks it, or
    ``--load-checkpoint``)."""
    if config.load_dir is not None:
        steps = [int(match.group(1)) for name in os.listdir(config.load_dir) if (match := CHECKPOINT_NAME.fullmatch(name))]
        step = config.load_step if config.load_step is not None else max(steps, default=-1)
        return step + 1
    if config.load_checkpoint is not None:
        match = CHECKPOINT_NAME.fullmatch(Path(config.load_checkpoint).name)
        if match is None:
            import torch

            return int(torch.load(config.load_checkpoint, map_location="cpu", weights_only=False)["step"]) + 1
        return int(match.group(1)) + 1
    return 0


@dataclass
class Ovs3dTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig; the trainer it sets up follows the model's schedule (:meth:`resolved`)."""

    _target: Type = field(default_factory=lambda: Trainer)
    max_num_iterations: Optional[int] = None
    """Steps to train. None: to the end of the schedule (--pipeline.model.schedule.*), counted from a
    loaded checkpoint's step. A number is kept as given, with a warning if it stops before the schedule ends."""

    def planned_iterations(self) -> Tuple[int, str]:
        """Steps the trainer will run, and what to say about them (see ``reconcile_iterations``)."""
        return reconcile_iterations(self.pipeline.model.schedule, checkpoint_start_step(self), self.max_num_iterations)

    def resolved(self) -> "Ovs3dTrainerConfig":
        """A copy with the number of steps to run and the model's schedule in every phase scheduler:
        what a ``Trainer`` is built from."""
        schedule = self.pipeline.model.schedule
        optimizers = {
            group: (
                {**entry, "scheduler": dataclasses.replace(entry["scheduler"], schedule=schedule)}
                if isinstance(entry.get("scheduler"), PhaseSchedulerConfig)
                else entry
            )
            for group, entry in self.optimizers.items()
        }
        return dataclasses.replace(self, max_num_iterations=self.planned_iterations()[0], optimizers=optimizers)

    def setup(self, **kwargs) -> Any:
        """The trainer (``ns-train`` calls this), built from :meth:`resolved`."""
        note = self.planned_iterations()[1]
        if note:
            CONSOLE.print(f"ovs3d: {note}")
        return self._target(self.resolved(), **kwargs)


@dataclass
class AdamBetasOptimizerConfig(AdamOptimizerConfig):
    """Adam with explicit betas (paper: (0.9, 0.99)). Learning rates are set by the phase scheduler."""

    betas: Tuple[float, float] = (0.9, 0.99)
    """Adam's beta coefficients."""


def phase_optimizers(trainable: Mapping[Any, Iterable[str]]) -> dict:
    """One Adam per parameter group trainable in some phase (``trainable``: the groups of each
    phase); the phase scheduler scales this lr to the schedule's rate."""
    groups = sorted({group for phase_groups in trainable.values() for group in phase_groups})
    return {
        group: {"optimizer": AdamBetasOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": PhaseSchedulerConfig(group=group)}
        for group in groups
    }


ovs3d_method = MethodSpecification(
    config=Ovs3dTrainerConfig(
        method_name="ovs3d",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=2000,
        mixed_precision=True,
        pipeline=Ovs3dPipelineConfig(
            datamanager=Ovs3dDataManagerConfig(dataparser=Ovs3dDataParserConfig()),
            model=Ovs3dModelConfig(schedule=ScheduleConfig(), eval_num_rays_per_chunk=1 << 15),
        ),
        optimizers=phase_optimizers(TRAINABLE),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="3D-OVS: weakly supervised open-vocabulary segmentation distilled from CLIP and DINO.",
)
