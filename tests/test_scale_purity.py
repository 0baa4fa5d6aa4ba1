"""The DINO-purity selection target (features/scale_purity.py) against a literal per-token loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovs3d_nerfstudio.features.scale_purity import purity_selection, scale_purity, triangle_weights


def literal_purity(tokens, radii, shift):
    """For every token and scale, sum the triangle weights of all tokens in the grid, and of those
    whose cosine with it exceeds ``shift``; their ratio."""
    unit = F.normalize(tokens.double(), dim=-1)
    height, width = unit.shape[:2]
    out = torch.zeros(len(radii), height, width, dtype=torch.float64)
    for s, radius in enumerate(radii):
        for y in range(height):
            for x in range(width):
                similar = total = 0.0
                for v in range(height):
                    for u in range(width):
                        weight = max(0.0, 1 - abs(v - y) / radius) * max(0.0, 1 - abs(u - x) / radius)
                        total += weight
                        if float(unit[y, x] @ unit[v, u]) > shift:
                            similar += weight
                out[s, y, x] = similar / total
    return out


def test_triangle_weights_peak_at_the_centre_and_reach_zero_at_the_radius():
    weights = triangle_weights(2.0, 3)
    assert torch.allclose(weights, torch.tensor([0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0]))
    assert triangle_weights(0.0, 1).tolist() == [0.0, 1.0, 0.0]  # degenerate radius: the token alone


def test_scale_purity_equals_the_literal_loop_on_random_tokens():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 6, 4, generator=generator)
    radii = (0.5, 1.7, 3.2)
    fast = scale_purity(tokens, radii, shift=0.2)
    assert fast.shape == (3, 5, 6)
    assert torch.allclose(fast.double(), literal_purity(tokens, radii, 0.2), atol=1e-5)


def test_a_small_object_prefers_the_fine_scale_and_a_large_surface_weighs_scales_alike():
    tokens = torch.zeros(12, 12, 2)
    tokens[..., 0] = 1.0  # background
    tokens[5:7, 5:7] = torch.tensor([0.0, 1.0])  # a 2x2-token object, orthogonal in DINO
    purity = scale_purity(tokens, (1.0, 2.5, 5.0), shift=0.7)
    selection = purity_selection(purity)
    assert torch.allclose(selection.sum(0), torch.ones(12, 12))
    object_pixel, surface_pixel = selection[:, 5, 5], selection[:, 0, 0]
    assert object_pixel[0] > object_pixel[1] > object_pixel[2]
    assert torch.allclose(surface_pixel, torch.full((3,), 1 / 3), atol=0.05)


def test_degenerate_inputs_stay_finite():
    zeros = torch.zeros(3, 3, 4)  # zero tokens: no token is similar to another, not even itself
    purity = scale_purity(zeros, (1.0, 2.0), shift=0.7)
    assert torch.isfinite(purity).all() and torch.isfinite(purity_selection(purity)).all()
    single = scale_purity(torch.randn(1, 1, 4), (4.0,), shift=0.7)
    assert single.shape == (1, 1, 1) and float(single) == 1.0


def test_the_datamanager_serves_each_random_ray_its_pixels_purity_selection(tmp_path):
    from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig, TrainingTargets
    from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
    from ovs3d_nerfstudio.data.procedural import write_scene
    from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig
    from tiny_run import TINY_CLIP, TINY_DINO, TINY_TRAINING, below
    from tiny_scene import tiny_scene_spec

    scene = write_scene(tiny_scene_spec(seed=1), tmp_path / "scene", mask_views=[0])
    config = Ovs3dDataManagerConfig(
        dataparser=Ovs3dDataParserConfig(data=scene),
        clip=ClipTeacherConfig(**TINY_CLIP, batch_size=4),
        dino=DinoTeacherConfig(**TINY_DINO),
        cache_dir=tmp_path / "cache",
        **below("pipeline.datamanager.", TINY_TRAINING),
        clip_view_fraction=1.0,
        patch_downscale=2,
    )
    config.pyramid.patch_fractions = (0.5, 0.25)
    datamanager = config.setup(device="cpu", targets=TrainingTargets(patches=False, selection_targets=True))
    datamanager.segmentation_start = 0
    torch.manual_seed(0)
    _, batch = datamanager.next_train(step=1)
    target = batch["selection_target"]
    assert target.shape == (len(batch["image"]), 2)
    assert (target > 0).all() and torch.allclose(target.sum(-1), torch.ones(len(target)), atol=1e-2)
    view, y, x = batch["indices"].unbind(-1)
    torch.testing.assert_close(target, datamanager.selection_targets[view, :, y, x].float())
    # The finer scale's windows reach less far, so they stay on the pixel's object at least as often.
    assert bool((target[:, 1] >= target[:, 0] - 1e-3).all())
