"""The ``ovs3d-splat`` method specification registered with nerfstudio (entry point only)."""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.plugins.types import MethodSpecification

from ovs3d_nerfstudio.config import Ovs3dTrainerConfig, phase_optimizers
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.splat.datamanager import Ovs3dSplatDataManagerConfig
from ovs3d_nerfstudio.splat.model import SPLAT_TRAINABLE, Ovs3dSplatModelConfig, SplatScheduleConfig
from ovs3d_nerfstudio.splat.pipeline import Ovs3dSplatPipelineConfig


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
        optimizers=phase_optimizers(SPLAT_TRAINABLE),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="3D-OVS on Gaussian splatting (gsplat on CUDA, a torch rasterizer on CPU).",
)
