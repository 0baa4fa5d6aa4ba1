"""Forward-facing camera paths: the formulas by hand, the paths on the built-in scene, the file and command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.cameras.camera_paths import get_path_from_json

from ovs3d_nerfstudio.camera_paths import (
    WriteCameraPath,
    focus_depth,
    forward_facing_path,
    interpolation_poses,
    look_at,
    mean_pose,
    spiral_poses,
    vertical_fov_degrees,
    write_camera_path,
)
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene


def camera(position, yaw_degrees: float = 0.0) -> np.ndarray:
    """An OpenGL camera at ``position`` turned ``yaw_degrees`` about +y from looking down -z."""
    yaw = math.radians(yaw_degrees)
    rotation = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    return np.concatenate([rotation, np.asarray(position, dtype=float)[:, None]], axis=1)


def test_mean_pose_by_hand():
    poses = np.stack([camera([-1, 0, 0], 10), camera([1, 2, 0], -10)])
    mean = mean_pose(poses)
    np.testing.assert_allclose(mean[:, 3], [0, 1, 0])
    np.testing.assert_allclose(mean[:, :3], np.eye(3), atol=1e-12)  # the two yaws cancel


def test_focus_depth_by_hand_and_degenerate_bounds():
    near_far = np.array([[1.0, 2.0], [2.0, 4.0]])
    # near 0.9 * 1, far 5 * 4; disparities blended 0.25 / 0.75.
    assert focus_depth(near_far) == pytest.approx(1.0 / (0.25 / 0.9 + 0.75 / 20.0))
    with pytest.raises(UserFacingError, match="--focus-depth"):
        focus_depth(np.array([[0.0, 2.0]]))


def test_look_at_by_hand():
    pose = look_at(np.array([0.0, 0.0, 5.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(pose, camera([0, 0, 5]), atol=1e-12)


def test_spiral_by_hand():
    # Four cameras on a cross, all looking down -z: the mean pose is the identity at the origin,
    # the radii are the 90th percentiles of |offsets| per axis: of (1, 1, 0, 0) in x, 1 (linear
    # interpolation between the two largest), of (0, 0, 0.5, 0.5) in y, 0.5; 0 in z.
    poses = np.stack([camera([1, 0, 0]), camera([-1, 0, 0]), camera([0, 0.5, 0]), camera([0, -0.5, 0])])
    path = spiral_poses(poses, focus=4.0, frames=4, rotations=1.0)
    expected_positions = [[1, 0, 0], [0, 0.5, 0], [-1, 0, 0], [0, -0.5, 0]]  # angles 0, 90, 180, 270 degrees
    np.testing.assert_allclose(path[:, :, 3], expected_positions, atol=1e-12)
    for pose in path:  # each looks at the focus point 4 units in front of the mean camera
        direction = np.array([0.0, 0.0, -4.0]) - pose[:, 3]
        np.testing.assert_allclose(-pose[:, 2], direction / np.linalg.norm(direction), atol=1e-12)


def test_spiral_stays_in_the_box_of_lopsided_cameras():
    # Centres at x = -1, 0, 0, 0.2: mean -0.2; the percentile radius (0.8 ish) would reach past x = 0.2.
    poses = np.stack([camera([x, y, 0]) for x, y in [(-1, 0), (0, 0.1), (0, -0.1), (0.2, 0)]])
    path = spiral_poses(poses, focus=3.0, frames=16)
    assert path[:, 0, 3].min() >= -1 and path[:, 0, 3].max() <= 0.2 + 1e-12


def test_interpolation_passes_through_the_training_poses():
    poses = np.stack([camera([0, 0, 0], 0), camera([1, 0, 0], 20), camera([1, 1, 0], -20)])
    path = interpolation_poses(poses, frames=5)  # keyframes at frames 0, 2, 4
    np.testing.assert_allclose(path[[0, 2, 4]], poses, atol=1e-9)
    np.testing.assert_allclose(path[1, :, 3], [0.5, 0, 0], atol=1e-12)
    np.testing.assert_allclose(path[1, :, :3], camera([0, 0, 0], 10)[:, :3], atol=1e-9)  # halfway in rotation
    with pytest.raises(UserFacingError, match="at least two"):
        interpolation_poses(poses[:1], frames=3)


def test_fov_by_hand():
    assert vertical_fov_degrees(fy=50.0, height=100.0) == pytest.approx(90.0)


@pytest.fixture(scope="module")
def built_in_scene(tmp_path_factory):
    scene = write_benchmark_scene("fruit_lawn", tmp_path_factory.mktemp("paths") / "scene", 0, 80, 60)
    return Ovs3dDataParserConfig(data=scene).setup().get_dataparser_outputs("train")


@pytest.mark.parametrize("kind", ["spiral", "interpolate"])
def test_path_stays_within_the_training_cameras(built_in_scene, kind):
    cameras = built_in_scene.cameras
    content = forward_facing_path(
        cameras.camera_to_worlds, float(cameras.fy[0]), (80.0, 60.0), built_in_scene.metadata["near_far"], kind, frames=60
    )
    # What ns-render camera-path reads from the file.
    path = get_path_from_json(json.loads(json.dumps(content))).camera_to_worlds.double().numpy()
    assert path.shape == (60, 3, 4)
    train = cameras.camera_to_worlds.double().numpy()
    lower, upper = train[:, :, 3].min(axis=0), train[:, :, 3].max(axis=0)
    margin = 0.1 * (upper - lower) + 1e-6  # the box grown by 10 % (float32 round trip: 1e-6)
    assert (path[:, :, 3] >= lower - margin).all() and (path[:, :, 3] <= upper + margin).all()
    mean_direction = -train[:, :, 2].mean(axis=0)
    mean_direction /= np.linalg.norm(mean_direction)
    angles = np.degrees(np.arccos(np.clip(-path[:, :, 2] @ mean_direction, -1.0, 1.0)))
    assert angles.max() < 15.0
    assert content["render_width"] == 80 and content["render_height"] == 60
    # The path moves: it is not the mean camera repeated.
    assert np.ptp(path[:, 0, 3]) > 0.5 * (upper[0] - lower[0])


def test_path_options_are_checked(built_in_scene):
    cameras = built_in_scene.cameras
    with pytest.raises(UserFacingError, match="--focus-depth"):
        forward_facing_path(cameras.camera_to_worlds, float(cameras.fy[0]), (80.0, 60.0), None, "spiral")
    with pytest.raises(UserFacingError, match="frames must be >= 1"):
        forward_facing_path(cameras.camera_to_worlds, float(cameras.fy[0]), (80.0, 60.0), None, "interpolate", frames=0)
    content = forward_facing_path(cameras.camera_to_worlds, 60.0, (80.0, 60.0), None, "spiral", frames=2, focus=3.0, render_scale=4)
    assert (content["render_width"], content["render_height"]) == (320, 240)


def test_writing_never_overwrites(tmp_path):
    target = tmp_path / "path.json"
    target.write_text("mine")
    with pytest.raises(UserFacingError, match="already exists"):
        write_camera_path({"camera_path": []}, target)
    assert target.read_text() == "mine"


def test_command_writes_a_path_of_a_trained_run(tiny_run):
    run, _ = tiny_run
    written = WriteCameraPath(load_config=run / "config.yml", frames=12).main()
    assert written == run / "camera_paths" / "spiral.json"
    cameras = get_path_from_json(json.loads(written.read_text()))
    assert cameras.camera_to_worlds.shape == (12, 3, 4)
    assert torch.isfinite(cameras.camera_to_worlds).all()
    with pytest.raises(UserFacingError, match="already exists"):
        WriteCameraPath(load_config=run / "config.yml", frames=12).main()
    interpolation = WriteCameraPath(load_config=run / "config.yml", kind="interpolate", output=run / "interp.json").main()
    assert len(json.loads(Path(interpolation).read_text())["camera_path"]) == 120
