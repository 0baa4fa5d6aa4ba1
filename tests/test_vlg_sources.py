"""Point sources of the point-cloud path and their frames: exact procedural points, nerfstudio
sparse points (``applied_transform`` undone), user ``.ply`` files, the up direction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs3d_nerfstudio.data.procedural import render_scene, write_scene
from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.vlg.fusion import visibility
from ovs3d_nerfstudio.vlg.ply import write_ply
from ovs3d_nerfstudio.vlg.points import (
    from_dataparser_frame,
    nerfstudio_sparse_points,
    procedural_depth,
    procedural_surface_points,
    to_dataparser_frame,
    up_direction,
    user_points,
)
from ovs3d_nerfstudio.vlg.views import load_views, project
from tiny_scene import tiny_scene_spec

SPEC = tiny_scene_spec(seed=0)


def _label_agreement(xyz: np.ndarray, labels: np.ndarray, scene: Path) -> float:
    """Fraction of the (point, view) pairs whose point projects onto a pixel whose exact depth it
    has and whose rendered label is its own: near 1 only if points and cameras share a frame."""
    views = load_views(scene)
    rendered = render_scene(SPEC)
    agree = total = 0
    points = torch.from_numpy(xyz)
    for view in range(views.num_views):
        u, v, z = project(points, torch.from_numpy(views.camera_to_worlds[view]), torch.from_numpy(views.intrinsics[view]))
        depth = torch.from_numpy(procedural_depth(SPEC, view, SPEC.height, SPEC.width) * views.scale)
        seen, rows, cols = visibility(u, v, z, depth, 0.0, tolerance=0.01)
        truth = rendered.label_maps[view][rows[seen].numpy(), cols[seen].numpy()]
        agree += int((truth == labels[seen.numpy()]).sum())
        total += len(xyz)
    return agree / total


def test_procedural_points_are_exact_and_in_the_cameras_frame(tmp_path: Path):
    scene = write_scene(SPEC, tmp_path / "scene", mask_views=[0])
    points = procedural_surface_points(SPEC, rays_per_pixel=0.25, seed=0)
    assert len(points) == 8 * round(64 * 48 * 0.25)  # a forward rig: every ray hits the wall or floor
    assert points.label_names == SPEC.labels
    assert set(np.unique(points.labels)) == set(range(len(SPEC.labels)))
    assert points.colours.dtype == np.float32 and 0 <= points.colours.min() and points.colours.max() <= 1
    # Exact geometry: the apple's points lie on its sphere.
    apple = SPEC.objects[0]
    distance = np.linalg.norm(points.xyz[points.labels == 0] - np.asarray(apple.center), axis=1)
    np.testing.assert_allclose(distance, apple.radius, atol=1e-9)
    views = load_views(scene)
    moved = to_dataparser_frame(points.xyz, views.transform, views.scale)
    np.testing.assert_allclose(from_dataparser_frame(moved, views.transform, views.scale), points.xyz, atol=1e-9)
    # Pixel-edge points may see a neighbour's label at the pixel centre; nothing else disagrees.
    # Every view of this rig sees most points (occluded ones and pixel-edge ones excepted).
    assert _label_agreement(moved, points.labels, scene) > 0.7
    # Without the dataparser transform the points miss their pixels.
    assert _label_agreement(points.xyz, points.labels, scene) < 0.1


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_nerfstudio_sparse_points_undo_applied_transform(tmp_path: Path):
    """ns-process-data writes poses and sparse_pc.ply in a frame moved by applied_transform;
    the points must land where the cameras see their surfaces."""
    scene = write_scene(SPEC, tmp_path / "scene", mask_views=[0])
    (scene / "poses_bounds.npy").unlink()
    applied = np.concatenate([_rotation(np.array([1.0, 2.0, 0.5]), 0.7), [[0.3], [-0.2], [1.1]]], axis=1)
    applied4 = np.vstack([applied, [0, 0, 0, 1]])
    frames = [
        {"file_path": f"images/{i:03d}.png", "transform_matrix": (applied4 @ np.vstack([pose, [0, 0, 0, 1]])).tolist()}
        for i, pose in enumerate(render_scene(SPEC).poses)
    ]
    meta = dict(fl_x=SPEC.rig.focal, fl_y=SPEC.rig.focal, cx=32, cy=24, w=64, h=48, applied_transform=applied.tolist())
    (scene / "transforms.json").write_text(json.dumps({**meta, "ply_file_path": "sparse_pc.ply", "frames": frames}))
    points = procedural_surface_points(SPEC, rays_per_pixel=0.1, seed=1)
    write_ply(scene / "sparse_pc.ply", points.xyz @ applied[:, :3].T + applied[:, 3], points.colours)
    views = load_views(scene)
    sparse = nerfstudio_sparse_points(scene, views.transform, views.scale)
    assert _label_agreement(sparse.xyz, points.labels, scene) > 0.7
    np.testing.assert_allclose(sparse.colours, np.round(points.colours * 255) / 255, atol=1e-6)
    # A user .ply in the original frame goes through the dataparser transform itself.
    write_ply(tmp_path / "world.ply", points.xyz)
    world = user_points(tmp_path / "world.ply", views.transform, views.scale, frame="world")
    np.testing.assert_allclose(world.xyz, sparse.xyz, atol=1e-5)
    assert np.all(world.colours == 0.5)
    with pytest.raises(UserFacingError, match="unknown point frame 'camera'"):
        user_points(tmp_path / "world.ply", views.transform, views.scale, frame="camera")
    del meta["applied_transform"]
    (scene / "transforms.json").write_text(json.dumps({**meta, "frames": frames}))
    with pytest.raises(UserFacingError, match="names no point cloud"):
        nerfstudio_sparse_points(scene, views.transform, views.scale)


def test_up_direction_and_errors():
    poses = render_scene(SPEC).poses
    np.testing.assert_allclose(up_direction(poses), [0, 1, 0], atol=0.05)
    cancelling = np.stack([poses[0], poses[0]])
    cancelling[1, :, 1] *= -1
    with pytest.raises(UserFacingError, match="no common up"):
        up_direction(cancelling)
    with pytest.raises(UserFacingError, match="rays per pixel"):
        procedural_surface_points(SPEC, rays_per_pixel=0)
