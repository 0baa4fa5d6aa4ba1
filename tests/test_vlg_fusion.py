"""Stage 1 of 3DSS-VLG: visibility (border, occlusion), z-buffer depth, fusion, scene mask,
pseudo labels, coverage, and reuse of the ``ovs3d`` feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovs3d_nerfstudio.data.labels import IGNORE
from ovs3d_nerfstudio.data.procedural import write_scene
from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.features.cache import FeatureCache
from ovs3d_nerfstudio.features.clip_pyramid import ClipFeatureStore, PixelClipPyramid, PyramidConfig, cache_settings
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig
from ovs3d_nerfstudio.vlg.fusion import (
    border_pixels,
    fuse,
    fusion_logits,
    pixel_features,
    pseudo_labels,
    visibility,
    zbuffer_depth,
)
from ovs3d_nerfstudio.vlg.points import procedural_depth, procedural_surface_points, to_dataparser_frame, up_direction
from ovs3d_nerfstudio.vlg.prepare import PreparedScene, check_vocabulary, load_pixel_features, prepare_scene
from ovs3d_nerfstudio.vlg.views import load_views, project
from tiny_scene import tiny_scene_spec

SYNTHETIC_CLIP = "ovs3d_nerfstudio.synthetic.teachers:synthetic_clip"
TINY_PYRAMID = PyramidConfig(patch_fractions=(0.5, 0.34, 0.25))


def test_border_scales_with_rows():
    assert border_pixels(240) == 10.0
    assert border_pixels(60) == 2.5
    assert border_pixels(480) == 20.0


def test_visibility_border_front_and_occlusion():
    depth = torch.full((10, 20), 2.0)
    depth[0, 5] = float("inf")  # unknown depth
    depth[5, 6] = 0.0  # unknown (a sensor hole)
    u = torch.tensor([5.5, 0.5, 19.5, 5.5, 5.5, 5.5, 5.5, 5.5, 5.5, 6.5, 2.0, 17.99])
    v = torch.tensor([5.5, 5.5, 5.5, 5.5, 5.5, 5.5, 5.5, 5.5, 0.5, 5.5, 2.0, 7.99])
    z = torch.tensor([2.0, 2.0, 2.0, 2.5, 2.51, 1.5, 1.49, -2.0, 2.0, 2.0, 2.0, 2.0])
    seen, rows, cols = visibility(u, v, z, depth, border=2.0)
    expected = [True, False, False, True, False, True, False, False, False, False, True, True]
    assert seen.tolist() == expected
    assert rows[0] == 5 and cols[0] == 5 and rows[-1] == 7 and cols[-1] == 17
    assert rows[~seen].eq(0).all() and cols[~seen].eq(0).all()
    # Without a border, the point in the first row sees unknown depth and stays unseen.
    assert not visibility(u[8:9], v[8:9], z[8:9], depth, border=0.0)[0].item()
    assert visibility(u[1:2], v[1:2], z[1:2], depth, border=0.0)[0].item()


def test_zbuffer_occludes_farther_points_only():
    u = torch.tensor([1.2, 1.7, 3.5, -1.0])
    v = torch.tensor([1.5, 1.1, 0.5, 0.5])
    z = torch.tensor([1.0, 2.0, 5.0, 1.0])
    depth = zbuffer_depth(u, v, z, height=3, width=4)
    assert depth[1, 1] == 1.0 and depth[0, 3] == 5.0
    assert torch.isinf(depth).sum() == 10
    seen = visibility(u, v, z, depth, border=0.0)[0]
    assert seen.tolist() == [True, False, True, False]  # the second point hides behind the first


def test_logits_and_pseudo_labels_with_scene_mask():
    fused = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.2, 0.9], [0.0, 0.0, 0.0]])
    text = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    logits = fusion_logits(fused, text)
    torch.testing.assert_close(logits, fused @ (text / text.norm(dim=1, keepdim=True)).T)
    covered = torch.tensor([True, True, True, False])
    assert pseudo_labels(logits, covered).tolist() == [0, 1, 2, IGNORE]
    mask = torch.tensor([True, True, False])
    assert pseudo_labels(logits, covered, mask).tolist() == [0, 1, 0, IGNORE]
    with pytest.raises(ValueError, match="excludes every class"):
        pseudo_labels(logits, covered, torch.zeros(3, dtype=torch.bool))


def _uniform_store(view_features: torch.Tensor, height: int, width: int) -> ClipFeatureStore:
    """One window covering each whole view: every pixel of view i has feature i."""
    pyramids = [
        PixelClipPyramid(
            height, width, [width], [width], [torch.tensor([[[0, 0, width, height]]], dtype=torch.int32)], [f.view(1, 1, -1)]
        )
        for f in view_features
    ]
    return ClipFeatureStore.from_pyramids(pyramids)


def test_fuse_averages_the_views_that_see_each_point():
    """Two cameras looking down -z; the second is shifted so that one point leaves its image."""
    height, width = 24, 24
    poses = torch.zeros(2, 3, 4, dtype=torch.float64)
    poses[:, :, :3] = torch.eye(3, dtype=torch.float64)
    poses[1, 0, 3] = 1.0
    intrinsics = torch.tensor([[24.0, 24.0, 12.0, 12.0]] * 2, dtype=torch.float64)
    xyz = torch.tensor([[0.5, 0.0, -3.0], [-0.9, 0.0, -3.0], [1.0, 0.0, -6.0], [0.5, 0.0, 3.0]], dtype=torch.float64)
    features = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    store = _uniform_store(features, height, width)
    fused, counts = fuse(xyz, store, poses, intrinsics, 1.0, depth=None)
    # Point 0 is seen by both views, point 1 leaves view 1's image, point 2 hides behind point 0
    # in view 0 only, point 3 is behind both cameras.
    assert counts.tolist() == [2, 1, 1, 0]
    torch.testing.assert_close(fused[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(fused[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(fused[2], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert fused[3].eq(0).all()
    # A given depth replaces the z-buffer: at depth 6 only the farther point passes.
    far = torch.full((height, width), 6.0, dtype=torch.float64)
    assert fuse(xyz, store, poses, intrinsics, 1.0, depth=lambda view: far)[1].tolist() == [0, 0, 2, 0]
    u, v, z = project(xyz, poses[0], intrinsics[0])
    torch.testing.assert_close(u, torch.tensor([16.0, 4.8, 16.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(z, torch.tensor([3.0, 3.0, 6.0, -3.0], dtype=torch.float64))


def test_prepare_scene_end_to_end_and_from_the_cache(tmp_path: Path):
    spec = tiny_scene_spec(seed=0)
    root = write_scene(spec, tmp_path / "scene", mask_views=[0])
    views = load_views(root)
    teacher = ClipTeacherConfig(source=SYNTHETIC_CLIP).setup()
    cache = FeatureCache(tmp_path / "cache")
    images = views.images(2)
    store, computed = load_pixel_features(images, teacher, TINY_PYRAMID, cache, 64)
    assert computed == 8 and (store.height, store.width) == (24, 32)
    # The keys are the ones ns-train ovs3d writes: the same images, teacher identity and settings.
    key = cache.key(images[3].cpu(), teacher.identity, cache_settings(TINY_PYRAMID))
    assert cache.path(key).is_file()
    again, computed = load_pixel_features(images, teacher, TINY_PYRAMID, cache, 64)
    assert computed == 0
    torch.testing.assert_close(again.dense(2, 1), store.dense(2, 1))
    # Pixel features of repeated pixels: gathered once, equal to the per-point gather.
    rows, cols = torch.tensor([3, 5, 3, 23, 5, 0]), torch.tensor([7, 1, 7, 31, 1, 0])
    direct = F.normalize(store.gather(torch.full_like(rows, 2), rows, cols), dim=-1).mean(dim=1)
    torch.testing.assert_close(pixel_features(store, 2, rows, cols), direct)

    points = procedural_surface_points(spec, rays_per_pixel=0.25)
    points.xyz = to_dataparser_frame(points.xyz, views.transform, views.scale)
    vocabulary = ["black cat", *views.labels]  # a distractor outside the scene
    exact = lambda view: torch.from_numpy(procedural_depth(spec, view, 24, 32) * views.scale)  # noqa: E731
    scene = prepare_scene(
        "tiny", points, views, store, 2, teacher.encode_text(vocabulary), vocabulary, exact, up_direction(views.camera_to_worlds)
    )
    assert scene.fused.shape == (len(points), teacher.embed_dim) and scene.fused.dtype == torch.float16
    coverage = float(scene.covered.float().mean())
    assert 0.9 < coverage < 1.0  # the scan's points are seen; some only near an image border
    assert scene.fused[~scene.covered].eq(0).all() and scene.pseudo[~scene.covered].eq(IGNORE).all()
    assert scene.pseudo[scene.covered].ge(1).all()  # the scene mask removes "black cat"
    assert scene.scene_mask().tolist() == [False, True, True, True, True, True]
    np.testing.assert_array_equal(scene.point_labels, points.labels + 1)
    accuracy = float((scene.pseudo == torch.from_numpy(scene.point_labels))[scene.covered].float().mean())
    assert accuracy > 0.75  # the synthetic teacher recognises colours
    saved = PreparedScene.load(scene.save(tmp_path / "tiny.pt"))
    assert saved.vocabulary == vocabulary and torch.equal(saved.pseudo, scene.pseudo)
    np.testing.assert_array_equal(saved.xyz, scene.xyz)
    assert not list(tmp_path.glob(".tiny.pt.*"))  # no temporary file left behind


def test_vocabulary_and_prepared_file_errors(tmp_path: Path):
    check_vocabulary(["A  apple", "wall"], ["a apple"], "s")
    with pytest.raises(UserFacingError, match="lacks 'wall' of scene s"):
        check_vocabulary(["apple"], ["apple", "wall"], "s")
    with pytest.raises(UserFacingError, match="run 'ovs3d-vlg prepare' first"):
        PreparedScene.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserFacingError, match="cannot read prepared scene"):
        PreparedScene.load(tmp_path / "junk.pt")
    torch.save({"format": 99}, tmp_path / "old.pt")
    with pytest.raises(UserFacingError, match="not a prepared scene of this version"):
        PreparedScene.load(tmp_path / "old.pt")


def test_fused_features_are_normalised_per_scale():
    store = _uniform_store(torch.tensor([[3.0, 4.0]]), 8, 8)
    poses = torch.zeros(1, 3, 4, dtype=torch.float64)
    poses[0, :, :3] = torch.eye(3, dtype=torch.float64)
    fused, counts = fuse(torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64), store, poses, torch.tensor([[8.0, 8.0, 4.0, 4.0]], dtype=torch.float64), 1.0, None)
    torch.testing.assert_close(fused[0], F.normalize(torch.tensor([3.0, 4.0]), dim=0))


def test_sensor_depth_is_resized_and_moved_to_the_dataparser_units(tmp_path: Path):
    from PIL import Image

    from ovs3d_nerfstudio.vlg.prepare import sensor_depth
    from ovs3d_nerfstudio.vlg.views import SceneViews

    millimetres = np.full((6, 8), 1500, dtype=np.uint16)
    millimetres[:2, :2] = 0  # a hole (covering what nearest resizing samples) stays unknown
    Image.fromarray(millimetres).save(tmp_path / "d.png")
    views = SceneViews(
        data=tmp_path, image_filenames=[tmp_path / "i.png"], camera_to_worlds=np.zeros((1, 3, 4)),
        intrinsics=np.zeros((1, 4)), width=8, height=6, labels=["a"], mask_paths={}, transform=np.eye(3, 4),
        scale=0.5, depth_filenames=[tmp_path / "d.png"], depth_unit_scale_factor=1e-3,
    )  # fmt: skip
    depth = sensor_depth(views, 3, 4)(0)
    assert depth.shape == (3, 4)
    assert depth[0, 0] == 0.0 and torch.allclose(depth.flatten()[1:], torch.tensor(0.75, dtype=torch.float64))
    views.depth_filenames = None
    with pytest.raises(UserFacingError, match="no depth images"):
        sensor_depth(views, 3, 4)
