"""The splat datamanager: both data layouts, initial points along training rays, FDA patch cameras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nerfstudio.cameras.cameras import Cameras, CameraType

from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.data.procedural import render_scene, write_scene
from ovs3d_nerfstudio.splat.datamanager import Ovs3dSplatDataManagerConfig, patch_cameras, points_along_rays
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig
from test_splat_model import camera, tiny_model
from tiny_run import TINY_CLIP, TINY_DINO
from tiny_scene import tiny_scene_spec


def write_transforms(scene: Path) -> None:
    """The generated scene in nerfstudio format (transforms.json, no poses_bounds.npy)."""
    spec = tiny_scene_spec(seed=1)
    frames = [
        {"file_path": f"images/{i:03d}.png", "transform_matrix": [*pose.tolist(), [0, 0, 0, 1]]}
        for i, pose in enumerate(render_scene(spec).poses)
    ]
    meta = dict(fl_x=spec.rig.focal, fl_y=spec.rig.focal, cx=spec.width / 2, cy=spec.height / 2, w=spec.width, h=spec.height)
    (scene / "transforms.json").write_text(json.dumps({**meta, "frames": frames}), encoding="utf-8")
    (scene / "poses_bounds.npy").unlink()


def rotated_cameras() -> Cameras:
    """Two cameras away from the origin, one turned about y, so depth is not the world z."""
    angle = torch.tensor(0.4)
    turn = torch.tensor([[angle.cos(), 0.0, angle.sin()], [0.0, 1.0, 0.0], [-angle.sin(), 0.0, angle.cos()]])
    poses = torch.zeros(2, 3, 4)
    poses[0, :, :3], poses[0, :, 3] = torch.eye(3), torch.tensor([0.2, -0.1, 0.5])
    poses[1, :, :3], poses[1, :, 3] = turn, torch.tensor([-0.3, 0.0, 1.0])
    return Cameras(camera_to_worlds=poses, fx=20.0, fy=18.0, cx=8.0, cy=6.0, width=16, height=12,
                   camera_type=CameraType.PERSPECTIVE)  # fmt: skip


def test_initial_points_lie_on_pixel_rays_between_each_views_bounds():
    cameras = rotated_cameras()
    images = torch.randint(0, 256, (2, 12, 16, 3), dtype=torch.uint8)
    near_far = torch.tensor([[0.5, 4.0], [1.0, 2.0]])
    points, colours = points_along_rays(cameras, images, near_far, 500, torch.Generator().manual_seed(0))
    assert points.shape == (500, 3) and colours.dtype == torch.uint8
    found = torch.zeros(500, dtype=torch.bool)
    for view in range(2):
        pose = cameras.camera_to_worlds[view]
        local = (points - pose[:, 3]) @ pose[:, :3]  # camera axes: x right, y up, looking down -z
        depth = -local[:, 2]
        column = cameras.fx[view] * local[:, 0] / depth + cameras.cx[view]
        row = -cameras.fy[view] * local[:, 1] / depth + cameras.cy[view]
        on_centre = ((column - column.floor() - 0.5).abs() < 1e-3) & ((row - row.floor() - 0.5).abs() < 1e-3)
        inside = (depth >= near_far[view, 0] - 1e-4) & (depth <= near_far[view, 1] + 1e-4)
        mine = on_centre & inside & (column > 0) & (column < 16) & (row > 0) & (row < 12)
        pixel = images[view, row[mine].long(), column[mine].long()]
        # A point belongs to the view whose pixel it came from: that pixel's colour.
        matches = (pixel == colours[mine]).all(-1)
        found[torch.nonzero(mine)[:, 0][matches]] = True
    assert found.all()
    # Uniform in disparity: more points near than far in the long-range view.
    depth0 = -((points - cameras.camera_to_worlds[0, :, 3]) @ cameras.camera_to_worlds[0, :, :3])[:, 2]
    assert float(depth0.median()) < 2.25


def test_a_patch_camera_renders_the_crop_of_the_full_view():
    """Exact for Gaussians centred in the patch (gsplat clamps the Jacobian of Gaussians far
    outside the image to its field of view, so those differ between crop and full view)."""
    model = tiny_model(step=4).eval()
    full = camera(32, 24)
    origins = torch.tensor([[0, 8, 16], [0, 8, 8]])
    pose = full.camera_to_worlds[0]
    local = (model.gauss_params["means"].detach() - pose[:, 3]) @ pose[:, :3]
    column = full.fx[0] * local[:, 0] / -local[:, 2] + full.cx[0]
    row = -full.fy[0] * local[:, 1] / -local[:, 2] + full.cy[0]
    opacities = model.gauss_params["opacities"].detach().clone()
    for index, (_, y0, x0) in enumerate(origins.tolist()):
        centred = (column >= x0) & (column < x0 + 8) & (row >= y0) & (row < y0 + 8)
        assert int(centred.sum()) > 0
        with torch.no_grad():
            model.gauss_params["opacities"].copy_(torch.where(centred[:, None], opacities, torch.full_like(opacities, -30.0)))
        rendered = model.render(patch_cameras(full, origins[index : index + 1], 8, 1.0), segmentation=True, background=torch.zeros(3))
        whole = model.render(full, segmentation=True, background=torch.zeros(3))
        for name in ("rgb", "clip_latent", "selection", "accumulation"):
            torch.testing.assert_close(rendered[name][0], whole[name][0, y0 : y0 + 8, x0 : x0 + 8], atol=1e-5, rtol=1e-5)
    halved = patch_cameras(full, origins, 8, 0.5)
    assert (int(halved.width[0]), int(halved.height[0])) == (4, 4)
    torch.testing.assert_close(halved.cx[:, 0], (full.cx[0, 0] - origins[:, 2]) * 0.5)
    assert model.render(halved, segmentation=True)["clip_latent"].shape == (2, 4, 4, model.config.latent_dim)


@pytest.mark.parametrize("layout", ["llff", "nerfstudio"])
def test_both_data_layouts_give_views_targets_and_initial_points(layout, tmp_path: Path):
    scene = write_scene(tiny_scene_spec(seed=1), tmp_path / "scene", mask_views=[0])
    if layout == "nerfstudio":
        write_transforms(scene)
    config = Ovs3dSplatDataManagerConfig(
        dataparser=Ovs3dDataParserConfig(data=scene),
        clip=ClipTeacherConfig(**TINY_CLIP, batch_size=4),
        dino=DinoTeacherConfig(**TINY_DINO),
        cache_dir=tmp_path / "cache",
        ray_downscale=2,
        train_num_rays_per_batch=32,
        num_patches=2,
        patch_tokens=2,
        patch_downscale=2,
        patch_rays_per_token=2,
    )
    config.pyramid.patch_fractions = (0.5, 0.25)
    manager = config.setup(device="cpu", segmentation_start=1)
    camera, batch = manager.next_train(1)
    assert (int(camera.width), int(camera.height)) == (32, 24) and batch["image"].shape == (24, 32, 3)
    view = batch["image_idx"]
    torch.testing.assert_close(batch["image"], manager.ray_images[view].float() / 255)
    assert batch["clip_targets"].shape[:2] == (32, 2) and batch["relevancy"].shape[:2] == (32, 2)
    points, colours = manager.initial_points(300)
    assert points.shape == (300, 3) and colours.shape == (300, 3) and torch.isfinite(points).all()
    cameras = manager.ray_cameras
    near_far = manager.train_dataparser_outputs.metadata["near_far"]
    # Each point is in front of some training camera, within that view's bounds (LLFF) or the
    # scene box's extent (nerfstudio layout, which has no bounds).
    local = torch.einsum("vij,nvi->nvj", cameras.camera_to_worlds[:, :, :3], points[:, None] - cameras.camera_to_worlds[:, :, 3])
    depth = -local[..., 2]
    if near_far is None:
        extent = float((manager.train_dataparser_outputs.scene_box.aabb[1] - manager.train_dataparser_outputs.scene_box.aabb[0]).norm())
        near_far = torch.tensor([[0.05 * extent, extent]]).expand(len(cameras), 2)
    inside = (depth >= near_far[:, 0] - 1e-4) & (depth <= near_far[:, 1] + 1e-4)
    assert inside.any(dim=1).all()
