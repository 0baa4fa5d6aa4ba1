"""Point sources of the point-cloud path, all brought into one frame: the dataparser's.

Every stage works in the frame nerfstudio's dataparser outputs (the cameras' frame after
``auto_orient_and_center_poses`` and the auto scale), so points, cameras and depth meet without
guessing. A source's points come in its own frame and are moved explicitly:

* exact labelled surface points of a procedural scene (tests, benchmark): world frame, moved with
  the dataparser transform and scale (:func:`to_dataparser_frame`);
* nerfstudio sparse points (``sparse_pc.ply`` named by ``ply_file_path`` in ``transforms.json``,
  written by ``ns-process-data``): they are in the frame of ``transforms.json``'s poses, which is
  the *original* frame moved by ``applied_transform``, so the transform applied is the
  dataparser's with ``applied_transform`` undone (:func:`sparse_points_transform`);
* a user ``.ply`` (:func:`read_ply`), in the data's original frame (like ``ovs3d-export
  --save-world-frame``) or already in the dataparser frame;
* the surface of a trained ``ovs3d`` run (:mod:`ovs3d_nerfstudio.vlg.sources`), rendered in the
  dataparser frame.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
from jaxtyping import Float

from ..data.procedural import SceneSpec, camera_poses, cast_rays, pixel_rays
from ..errors import UserFacingError
from .ply import PointCloud, read_ply

LEGACY_COLMAP_APPLIED_TRANSFORM = ((0.0, 1.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -1.0, 0.0))
"""nerfstudio's ``applied_transform`` for COLMAP data written before the field existed (its
dataparser assumes it when ``colmap/sparse/0`` is present and the field is not)."""


@dataclass
class LabelledPoints:
    """Points of one scene in the dataparser frame: positions ``(N, 3)`` float64, colours
    ``(N, 3)`` float32 in [0, 1], and labels ``(N,)`` int64 into ``label_names`` (-1 = unknown)
    when the source has them."""

    xyz: np.ndarray
    colours: np.ndarray
    labels: Optional[np.ndarray] = None
    label_names: Optional[List[str]] = None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def to_dataparser_frame(
    xyz: Float[np.ndarray, "N 3"], transform: Float[np.ndarray, "3 4"], scale: float
) -> Float[np.ndarray, "N 3"]:
    """``scale * (R x + t)``: what the dataparser does to the camera positions."""
    transform = np.asarray(transform, dtype=np.float64)
    return float(scale) * (np.asarray(xyz, dtype=np.float64) @ transform[:, :3].T + transform[:, 3])


def from_dataparser_frame(
    xyz: Float[np.ndarray, "N 3"], transform: Float[np.ndarray, "3 4"], scale: float
) -> Float[np.ndarray, "N 3"]:
    """The inverse of :func:`to_dataparser_frame` (the data's original frame)."""
    transform = np.asarray(transform, dtype=np.float64)
    return (np.asarray(xyz, dtype=np.float64) / float(scale) - transform[:, 3]) @ transform[:, :3]


def procedural_surface_points(spec: SceneSpec, rays_per_pixel: float = 1.0, seed: int = 0) -> LabelledPoints:
    """Exact surface points of a procedural scene in its world frame, as a scan from its views.

    Rays through jittered positions of every view's pixels (``rays_per_pixel`` per pixel on
    average) are cast against the exact geometry; each hit is kept with its shaded colour and
    label, so the points are what the images see (a surface no view sees has no point, as in a
    real scan). Labels index ``spec.labels``.
    """
    if rays_per_pixel <= 0:
        raise UserFacingError(f"rays per pixel must be positive; got {rays_per_pixel}")
    rng = np.random.default_rng(seed)
    focal = spec.rig.focal
    count = max(1, int(round(spec.width * spec.height * rays_per_pixel)))
    xyz, colours, labels = [], [], []
    for c2w in camera_poses(spec.rig):
        u = rng.uniform(0.0, spec.width, count) - spec.width / 2.0
        v = rng.uniform(0.0, spec.height, count) - spec.height / 2.0
        camera_dirs = np.stack([u / focal, -v / focal, -np.ones(count)], axis=-1)
        directions = camera_dirs @ c2w[:, :3].T
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        hits = cast_rays(spec, np.broadcast_to(c2w[:, 3], directions.shape).copy(), directions)
        keep = hits.labels >= 0
        xyz.append(hits.points[keep])
        colours.append(hits.colours[keep])
        labels.append(hits.labels[keep])
    return LabelledPoints(
        xyz=np.concatenate(xyz),
        colours=np.clip(np.concatenate(colours), 0.0, 1.0).astype(np.float32),
        labels=np.concatenate(labels).astype(np.int64),
        label_names=list(spec.labels),
    )


def procedural_depth(spec: SceneSpec, view: int, height: int, width: int) -> Float[np.ndarray, "H W"]:
    """Exact depth along the optical axis of one view at ``height x width`` (world units; inf
    where nothing is hit): the occlusion test's reference for procedural scenes."""
    c2w = camera_poses(spec.rig)[view]
    factor = width / spec.width
    if abs(height / spec.height - factor) > 1e-9:
        raise ValueError(f"{width}x{height} does not have the aspect of the {spec.width}x{spec.height} views")
    scaled = dataclasses.replace(
        spec, rig=dataclasses.replace(spec.rig, focal=spec.rig.focal * factor), width=width, height=height
    )
    origins, directions = pixel_rays(scaled, c2w)
    hits = cast_rays(scaled, origins.reshape(-1, 3), directions.reshape(-1, 3))
    depth = hits.distance * (directions.reshape(-1, 3) @ -c2w[:, 2])
    return depth.reshape(height, width)


def sparse_points_transform(data: Path, dataparser_transform: Float[np.ndarray, "3 4"]) -> Float[np.ndarray, "3 4"]:
    """The transform from ``transforms.json``'s frame (where ``sparse_pc.ply`` lives) to the
    dataparser frame: the dataparser transform with ``applied_transform`` undone."""
    meta = _transforms_json(data)
    applied = meta.get("applied_transform")
    if applied is None and (_data_root(data) / "colmap" / "sparse" / "0").exists():
        applied = LEGACY_COLMAP_APPLIED_TRANSFORM
    full = np.vstack([np.asarray(dataparser_transform, dtype=np.float64), [0.0, 0.0, 0.0, 1.0]])
    if applied is None:
        return full[:3]
    applied4 = np.vstack([np.asarray(applied, dtype=np.float64), [0.0, 0.0, 0.0, 1.0]])
    return (full @ np.linalg.inv(applied4))[:3]


def sparse_points_scale(data: Path, dataparser_scale: float) -> float:
    """The scale of the camera positions, without ``applied_scale`` (which nerfstudio folds into
    its reported scale after scaling the poses)."""
    return float(dataparser_scale) / float(_transforms_json(data).get("applied_scale", 1.0))


def nerfstudio_sparse_points(data: Path, dataparser_transform, dataparser_scale: float) -> LabelledPoints:
    """The sparse points of ``ns-process-data`` output in the dataparser frame."""
    meta = _transforms_json(data)
    if "ply_file_path" not in meta:
        raise UserFacingError(
            f"{_data_root(data) / 'transforms.json'} names no point cloud ('ply_file_path'): process the data with "
            "ns-process-data (COLMAP writes sparse_pc.ply), or give a .ply with --points"
        )
    cloud = read_ply(_data_root(data) / meta["ply_file_path"])
    xyz = to_dataparser_frame(
        cloud.xyz, sparse_points_transform(data, dataparser_transform), sparse_points_scale(data, dataparser_scale)
    )
    return _with_colours(cloud, xyz)


def user_points(path: Path, dataparser_transform, dataparser_scale: float, frame: str) -> LabelledPoints:
    """A user's ``.ply``: ``frame`` is ``"world"`` (the data's original frame, moved here) or
    ``"dataparser"`` (already in the dataparser frame)."""
    cloud = read_ply(path)
    if frame == "world":
        xyz = to_dataparser_frame(cloud.xyz, dataparser_transform, dataparser_scale)
    elif frame == "dataparser":
        xyz = cloud.xyz
    else:
        raise UserFacingError(f"unknown point frame {frame!r}: use 'world' or 'dataparser'")
    return _with_colours(cloud, xyz)


def _with_colours(cloud: PointCloud, xyz: np.ndarray) -> LabelledPoints:
    """Points without colours get mid grey (the network's input is colour; 0 in [-1, 1])."""
    colours = cloud.colours if cloud.colours is not None else np.full((len(xyz), 3), 0.5, dtype=np.float32)
    return LabelledPoints(xyz=xyz, colours=colours.astype(np.float32), labels=cloud.labels)


def _data_root(data: Path) -> Path:
    data = Path(data)
    return data.parent if data.suffix == ".json" else data


def _transforms_json(data: Path) -> dict:
    path = Path(data) if Path(data).suffix == ".json" else Path(data) / "transforms.json"
    if not path.is_file():
        raise UserFacingError(f"{path} does not exist: sparse points come with nerfstudio-format data (ns-process-data)")
    return json.loads(path.read_text(encoding="utf-8"))


def up_direction(camera_to_worlds: Float[np.ndarray, "V 3 4"]) -> Float[np.ndarray, "3"]:
    """The scene's up: the mean of the cameras' up axes (OpenGL second column), normalised.
    Augmentation rotates about it."""
    up = np.asarray(camera_to_worlds, dtype=np.float64)[:, :, 1].mean(axis=0)
    norm = np.linalg.norm(up)
    if norm < 1e-6:
        raise UserFacingError("the cameras' up directions cancel out: the scene has no common up direction")
    return up / norm

