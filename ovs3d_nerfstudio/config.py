"""The ``ovs3d`` method specification registered with nerfstudio (entry point only).

The ``ovs3d-data`` dataparser specification lives in ``dataparser_config.py``: nerfstudio
imports dataparser entry points while ``base_datamanager`` is being imported, so that
module must not import the datamanager (this one does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.model import Ovs3dModelConfig
from ovs3d_nerfstudio.pipeline import Ovs3dPipelineConfig
from ovs3d_nerfstudio.schedule import ScheduleConfig, TRAINABLE


@dataclass
class AdamBetasOptimizerConfig(AdamOptimizerConfig):
    """Adam with explicit betas (paper: (0.9, 0.99)). Learning rates are set by the schedule."""

    betas: Tuple[float, float] = (0.9, 0.99)
    """Adam's beta coefficients."""


def _optimizers() -> dict:
    groups = sorted({group for trainable in TRAINABLE.values() for group in trainable})
    return {group: {"optimizer": AdamBetasOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": None} for group in groups}


_schedule = ScheduleConfig()

ovs3d_method = MethodSpecification(
    config=TrainerConfig(
        method_name="ovs3d",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=2000,
        max_num_iterations=_schedule.total_steps,
        mixed_precision=True,
        pipeline=Ovs3dPipelineConfig(
            datamanager=Ovs3dDataManagerConfig(dataparser=Ovs3dDataParserConfig()),
            model=Ovs3dModelConfig(schedule=_schedule, eval_num_rays_per_chunk=1 << 15),
        ),
        optimizers=_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="3D-OVS: weakly supervised open-vocabulary segmentation distilled from CLIP and DINO.",
)
