"""The posed views of a scene, read through the project's dataparser, and pinhole projection.

The views come from :class:`~ovs3d_nerfstudio.data.ovs3d_dataparser.Ovs3dDataParser` (3D-OVS /
LLFF folders and nerfstudio-format data alike), every view in one split, so the cameras are in
the dataparser frame the points are moved into (:mod:`ovs3d_nerfstudio.vlg.points`) and the
annotated views keep their masks for the 2D evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..data.datamanager import load_downscaled_images, load_label_map
from ..data.ovs3d_dataparser import Ovs3dDataParserConfig
from ..errors import UserFacingError


@dataclass
class SceneViews:
    """Cameras (OpenGL camera-to-world in the dataparser frame, full-resolution intrinsics),
    images, labels and masks of one scene."""

    data: Path
    image_filenames: List[Path]
    camera_to_worlds: np.ndarray
    """``(V, 3, 4)`` float64."""
    intrinsics: np.ndarray
    """``(V, 4)`` fx, fy, cx, cy in pixels of the full-resolution images."""
    width: int
    height: int
    labels: List[str]
    mask_paths: Dict[int, Dict[str, Path]]
    """View index -> label -> mask file, for the annotated views."""
    transform: np.ndarray
    """``(3, 4)`` original frame -> dataparser frame (before ``scale``)."""
    scale: float
    depth_filenames: Optional[List[Path]] = None
    depth_unit_scale_factor: float = 1e-3

    @property
    def num_views(self) -> int:
        return len(self.image_filenames)

    def images(self, downscale: int) -> Tensor:
        """``(V, H/f, W/f, 3)`` uint8, box-filtered exactly as the ``ovs3d`` datamanager does, so
        the feature cache's keys match."""
        return load_downscaled_images(self.image_filenames, downscale)

    def label_map(self, view: int, height: int, width: int) -> Tensor:
        """The ground-truth label map of an annotated view at ``height x width`` (``IGNORE`` off the masks)."""
        return load_label_map(self.mask_paths[view], self.labels, height, width)


def load_views(data: Path, labels: Sequence[str] = (), parser: Optional[Ovs3dDataParserConfig] = None) -> SceneViews:
    """Every view of the scene at ``data`` through the ``ovs3d-data`` dataparser, with
    ``labels`` replacing the scene's own when given. ``parser`` is a trained run's dataparser
    config, so its pose normalisation (and so its frame) is the run's; by default the
    dataparser's defaults."""
    data = Path(data)
    if not data.exists():
        raise UserFacingError(f"scene folder {data} does not exist: pass a 3D-OVS or nerfstudio-format scene")
    base = parser if parser is not None else Ovs3dDataParserConfig()
    config = dataclasses.replace(base, data=data, eval_mode="all", labels=tuple(labels) or base.labels)
    outputs = config.setup().get_dataparser_outputs("train")
    cameras = outputs.cameras
    intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=1).double().numpy()
    depth_filenames = outputs.metadata.get("depth_filenames")
    return SceneViews(
        data=data,
        image_filenames=list(outputs.image_filenames),
        camera_to_worlds=cameras.camera_to_worlds.double().numpy(),
        intrinsics=intrinsics,
        width=int(cameras.width[0]),
        height=int(cameras.height[0]),
        labels=list(outputs.metadata["labels"]),
        mask_paths=dict(outputs.metadata.get("mask_paths") or {}),
        transform=outputs.dataparser_transform.double().numpy()[:3],
        scale=float(outputs.dataparser_scale),
        depth_filenames=list(depth_filenames) if depth_filenames else None,
        depth_unit_scale_factor=float(outputs.metadata.get("depth_unit_scale_factor", 1e-3)),
    )


def project(
    xyz: Float[Tensor, "N 3"], camera_to_world: Float[Tensor, "3 4"], intrinsics: Float[Tensor, "4"], downscale: float = 1.0
) -> Tuple[Tensor, Tensor, Tensor]:
    """Continuous pixel coordinates ``(u, v)`` (pixel ``i`` spans ``[i, i+1)``, its centre at
    ``i + 0.5``, as nerfstudio's rays) at 1/``downscale`` resolution, and the depth ``z`` along
    the optical axis (positive in front of an OpenGL camera, which looks along -z)."""
    rotation, centre = camera_to_world[:, :3], camera_to_world[:, 3]
    local = (xyz - centre) @ rotation  # camera coordinates: rows are x_c, y_c, z_c
    depth = -local[:, 2]
    safe = torch.where(depth.abs() > 1e-12, depth, torch.full_like(depth, 1e-12))
    fx, fy, cx, cy = intrinsics.unbind()
    u = (fx * local[:, 0] / safe + cx) / downscale
    v = (-fy * local[:, 1] / safe + cy) / downscale
    return u, v, depth
