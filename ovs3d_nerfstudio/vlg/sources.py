"""What a trained ``ovs3d`` or ``ovs3d-splat`` run gives the point-cloud path: its surface
points, its rendered depth for the occlusion test, and the feature settings that make its cache
entries reusable.

The surface is sampled as ``ovs3d-export`` samples it, in the run's dataparser frame: for a
field, random training rays kept where it is opaque, the point at the rendered depth; for
Gaussians, the means of those whose own opacity exceeds the threshold, with their colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserFacingError
from ..export import opaque_gaussians, sample_labelled_points
from ..features.clip_pyramid import PyramidConfig
from ..runs import load_ovs3d_run
from ..splat.model import Ovs3dSplatModel
from ..teachers.config import ClipTeacherConfig
from .fusion import DepthProvider
from .points import LabelledPoints
from .views import SceneViews


@dataclass
class TrainedRun:
    """A loaded run and the settings of the features ``ns-train`` cached for it."""

    pipeline: object
    data: Path
    clip: ClipTeacherConfig
    pyramid: PyramidConfig
    ray_downscale: int
    cache_dir: Optional[Path]

    @property
    def dataparser(self):
        return self.pipeline.datamanager.config.dataparser  # type: ignore[attr-defined]


def load_run(config_path: Path) -> TrainedRun:
    """The run at ``config_path`` (its ``config.yml``); a missing file is a one-line error."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise UserFacingError(f"no trained run at {config_path}: pass the config.yml of an 'ns-train ovs3d' or 'ns-train ovs3d-splat' run")
    pipeline = load_ovs3d_run(config_path)
    manager = pipeline.datamanager.config
    return TrainedRun(
        pipeline=pipeline,
        data=Path(manager.dataparser.data),
        clip=manager.clip,
        pyramid=manager.pyramid,
        ray_downscale=int(manager.ray_downscale),
        cache_dir=manager.cache_dir,
    )


def run_surface_points(run: TrainedRun, num_points: int, opacity_threshold: float = 0.5, seed: int = 0) -> LabelledPoints:
    """Opaque surface points of the field with their rendered colours, or opaque Gaussians'
    means with their colours (dataparser frame)."""
    model = run.pipeline.model  # type: ignore[attr-defined]
    if isinstance(model, Ovs3dSplatModel):
        chosen = opaque_gaussians(model, opacity_threshold, num_points, seed, flag="--surface-opacity")
        params = model.gauss_params
        return LabelledPoints(
            xyz=params["means"].detach()[chosen].double().cpu().numpy(),
            colours=torch.sigmoid(params["features_dc"].detach()[chosen].float()).cpu().numpy(),
        )
    cameras = run.pipeline.datamanager.train_dataparser_outputs.cameras  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(seed)
    points = sample_labelled_points(model, cameras, num_points, opacity_threshold, 4 * num_points, generator)
    if len(points["positions"]) == 0:
        raise UserFacingError(f"no ray reached opacity {opacity_threshold}: is the run trained?")
    return LabelledPoints(
        xyz=points["positions"].double().numpy(), colours=points["rgb"].clamp(0, 1).float().numpy()
    )


def field_depth(run: TrainedRun, views: SceneViews, downscale: int) -> DepthProvider:
    """The run's rendered depth per view at the feature resolution, along the optical axis: a
    field renders distance along the (unit) ray, converted here; Gaussians render the expected
    camera depth already."""
    model = run.pipeline.model  # type: ignore[attr-defined]
    cameras = run.pipeline.datamanager.train_dataparser_outputs.cameras  # type: ignore[attr-defined]
    along_axis = isinstance(model, Ovs3dSplatModel)

    @torch.no_grad()
    def provider(view: int) -> torch.Tensor:
        camera = cameras[view : view + 1]
        camera.rescale_output_resolution(1.0 / downscale)
        outputs = model.get_outputs_for_camera(camera.to(model.device))
        distance = outputs["depth"][..., 0].double().cpu()
        if along_axis:
            return distance
        height, width = distance.shape
        fx, fy, cx, cy = (float(value) for value in (camera.fx, camera.fy, camera.cx, camera.cy))
        x = (torch.arange(width, dtype=torch.float64) + 0.5 - cx) / fx
        y = (torch.arange(height, dtype=torch.float64) + 0.5 - cy) / fy
        stretch = torch.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2)
        return distance / stretch

    return provider


def check_same_scene(run: TrainedRun, data: Optional[Path]) -> Path:
    """The run's data folder, or ``data`` when it is the same one."""
    if data is not None and Path(data).resolve() != run.data.resolve():
        raise UserFacingError(f"--data {data} is not the data the run was trained on ({run.data}): leave --data out")
    return run.data

