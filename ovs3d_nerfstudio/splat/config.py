"""The ``ovs3d-splat`` method specification registered with nerfstudio (entry point only)."""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.plugins.types import MethodSpecification

from ovs3d_nerfstudio.config import AdamBetasOptimizerConfig, Ovs3dTrainerConfig
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.schedule import PhaseSchedulerConfig
from ovs3d_nerfstudio.splat.datamanager import Ovs3dSplatDataManagerConfig
from ovs3d_nerfstudio.splat.model import SPLAT_TRAINABLE, Ovs3dSplatModelConfig, SplatScheduleConfig
from ovs3d_nerfstudio.splat.pipeline import Ovs3dSplatPipelineConfig


def _optimizers() -> dict:
    """One Adam per parameter group (densification needs one per per-Gaussian tensor); the phase
    scheduler sets each group's rate from the schedule."""
    groups = sorted({group for trainable in SPLAT_TRAINABLE.values() for group in trainable})
    return {
        group: {"optimizer": AdamBetasOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": PhaseSchedulerConfig(group=group)}
        for group in groups
    }


ovs3d_splat_method = MethodSpecification(
    config=Ovs3dTrainerConfig(
        method_name="ovs3d-splat",
        steps_per_eval_batch=0,
        steps_per_eval_image=500,
        steps_per_save=2000,
        mixed_precision=False,
        pipeline=Ovs3dSplatPipelineConfig(
            datamanager=Ovs3dSplatDataManagerConfig(dataparser=Ovs3dDataParserConfig()),
            model=Ovs3dSplatModelConfig(schedule=SplatScheduleConfig()),
        ),
        optimizers=_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="3D-OVS on Gaussian splatting (gsplat on CUDA, a torch rasterizer on CPU).",
)
