"""Procedural scenes: determinism, exact masks, visible objects, poses that survive LLFF and the dataparser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovs3d_nerfstudio.data.procedural import (
    mask_folder_name,
    pixel_rays,
    render_scene,
    write_scene,
)
from tiny_scene import tiny_scene_spec

MASK_VIEWS = (0, 3, 5)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    spec = tiny_scene_spec(seed=0)
    root = write_scene(spec, tmp_path_factory.mktemp("procedural") / "scene", MASK_VIEWS)
    return spec, render_scene(spec), root


def test_same_seed_same_scene_other_seed_other_scene():
    first, again, other = render_scene(tiny_scene_spec(3)), render_scene(tiny_scene_spec(3)), render_scene(tiny_scene_spec(4))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.images, other.images)


def test_shapes_and_every_object_is_visible_in_every_view():
    spec = tiny_scene_spec(1)
    scene = render_scene(spec)
    n, h, w = spec.rig.num_views, spec.height, spec.width
    assert scene.images.shape == (n, h, w, 3) and scene.images.dtype == np.uint8
    assert scene.label_maps.shape == (n, h, w) and scene.poses.shape == (n, 3, 4)
    assert (scene.label_maps >= 0).all(), "the wall must catch every ray of a forward-facing rig"
    for view in range(n):
        counts = np.bincount(scene.label_maps[view].ravel(), minlength=len(spec.labels))
        assert (counts >= 20).all(), f"view {view}: pixels per label {dict(zip(spec.labels, counts))}"
    # Shading and textures make objects distinguishable by colour, not only by label.
    apple = scene.label_maps == spec.labels.index("red apple")
    assert scene.images[apple][:, 0].mean() > 2 * scene.images[apple][:, 2].mean()


def test_written_masks_are_exact_and_disjoint(written):
    spec, scene, root = written
    assert (root / "segmentations" / "classes.txt").read_text(encoding="utf-8").splitlines() == spec.labels
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"{i:03d}.png" for i in range(spec.rig.num_views)]
    np.testing.assert_array_equal(np.asarray(Image.open(root / "images" / "002.png")), scene.images[2])
    for view in MASK_VIEWS:
        folder = root / "segmentations" / mask_folder_name(view)
        masks = np.stack([np.asarray(Image.open(folder / f"{label}.png")) for label in spec.labels])
        assert set(np.unique(masks)) <= {0, 255}
        assert ((masks > 0).sum(axis=0) == 1).all(), "each pixel belongs to exactly one mask"
        np.testing.assert_array_equal(masks.argmax(axis=0), scene.label_maps[view])
    assert not (root / "segmentations" / mask_folder_name(1)).exists()


def test_poses_bounds_are_llff_convention(written):
    spec, scene, root = written
    poses_bounds = np.load(root / "poses_bounds.npy")
    assert poses_bounds.shape == (spec.rig.num_views, 17)
    llff = poses_bounds[:, :15].reshape(-1, 3, 5)
    np.testing.assert_allclose(llff[:, :, 4], [[spec.height, spec.width, spec.rig.focal]] * spec.rig.num_views)
    # [down, right, backwards] back to [right, up, backwards].
    opengl = np.concatenate([llff[:, :, 1:2], -llff[:, :, 0:1], llff[:, :, 2:4]], axis=-1)
    np.testing.assert_allclose(opengl, scene.poses, atol=1e-12)
    # The bounds enclose what each view sees: the apple's front and the wall behind it.
    apple = spec.objects[0]
    for view, c2w in enumerate(scene.poses):
        near, far = poses_bounds[view, 15:]
        assert 0 < near < c2w[2, 3] - (apple.center[2] + apple.radius)
        assert far > c2w[2, 3] - spec.wall.offset
    np.testing.assert_allclose(poses_bounds[:, 15], scene.near)


def test_cameras_look_at_the_target():
    spec = tiny_scene_spec(0)
    scene = render_scene(spec)
    target = np.asarray(spec.rig.target)
    for c2w in scene.poses:
        to_target = target - c2w[:, 3]
        np.testing.assert_allclose(to_target / np.linalg.norm(to_target), -c2w[:, 2], atol=1e-12)
        np.testing.assert_allclose(c2w[:, :3].T @ c2w[:, :3], np.eye(3), atol=1e-12)


def test_write_scene_rejects_unknown_mask_view(tmp_path: Path):
    with pytest.raises(ValueError, match="Mask view 8 does not exist"):
        write_scene(tiny_scene_spec(0), tmp_path, [8])


def _to_output_space(points: np.ndarray, transform: torch.Tensor, scale: float) -> np.ndarray:
    matrix = transform.double().numpy()
    return scale * (points @ matrix[:, :3].T + matrix[:, 3])


@pytest.mark.parametrize("normalise", [False, True])
def test_dataparser_recovers_the_generator_geometry(written, normalise: bool):
    from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig

    spec, scene, root = written
    options = {} if normalise else dict(orientation_method="none", center_method="none", auto_scale_poses=False)
    outputs = Ovs3dDataParserConfig(data=root, **options).setup().get_dataparser_outputs("train")
    cameras, transform, scale = outputs.cameras, outputs.dataparser_transform, outputs.dataparser_scale
    c2w = cameras.camera_to_worlds.double().numpy()
    if not normalise:
        np.testing.assert_allclose(c2w, scene.poses, atol=1e-5)
        assert scale == 1.0

    # Camera centres and look directions, mapped through the dataparser transform.
    rotation = transform[:, :3].double().numpy()
    np.testing.assert_allclose(c2w[:, :, 3], _to_output_space(scene.poses[:, :, 3], transform, scale), atol=1e-5)
    np.testing.assert_allclose(c2w[:, :, 2], scene.poses[:, :, 2] @ rotation.T, atol=1e-5)

    # nerfstudio's rays through each pixel equal the generator's rays.
    view = 2
    origins, directions = pixel_rays(spec, scene.poses[view])
    rays = cameras.generate_rays(camera_indices=view, keep_shape=True)
    np.testing.assert_allclose(rays.directions.double().numpy(), directions @ rotation.T, atol=1e-5)
    np.testing.assert_allclose(rays.origins.double().numpy(), _to_output_space(origins, transform, scale), atol=1e-5)

    # A surface point seen at pixel (row, col) projects back onto that pixel with the parsed camera.
    row, col = 17, 40
    depth_along_ray = 2.7
    point = _to_output_space(origins[row, col] + depth_along_ray * directions[row, col], transform, scale)
    local = c2w[view, :, :3].T @ (point - c2w[view, :, 3])
    u = cameras.fx[view, 0].item() * local[0] / -local[2] + cameras.cx[view, 0].item()
    v = -cameras.fy[view, 0].item() * local[1] / -local[2] + cameras.cy[view, 0].item()
    np.testing.assert_allclose([u, v], [col + 0.5, row + 0.5], atol=1e-3)
