"""The splat datamanager's geometry: initial points along training rays and FDA patch cameras."""

from __future__ import annotations

import torch

from nerfstudio.cameras.cameras import Cameras, CameraType

from ovs3d_nerfstudio.splat.datamanager import patch_cameras, points_along_rays
from test_splat_model import camera, tiny_model


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
