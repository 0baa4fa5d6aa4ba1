"""FDA patch geometry: origins on the token grid, ray order, pooling, bundle concatenation."""

import torch

from nerfstudio.cameras.rays import RayBundle

from ovs3d_nerfstudio.data.patches import (
    concat_ray_bundles,
    patch_ray_indices,
    pool_patch_rays,
    sample_patch_origins,
)


def test_origins_are_token_aligned_and_inside():
    torch.manual_seed(0)
    origins = sample_patch_origins(200, 5, height=70, width=90, patch_pixels=32, stride=8, device="cpu")
    assert origins.shape == (200, 3)
    assert bool((origins[:, 0] < 5).all())
    assert bool((origins[:, 1:] % 8 == 0).all())
    assert int(origins[:, 1].max()) + 32 <= 70 and int(origins[:, 2].max()) + 32 <= 90


def test_every_pixel_when_rays_per_token_equals_stride():
    origins = torch.tensor([[2, 8, 16]])
    indices = patch_ray_indices(origins, tokens=3, stride=4, rays_per_token=4)
    assert indices.shape == (3 * 3 * 4 * 4, 3)
    assert bool((indices[:, 0] == 2).all())
    pixels = {(int(y), int(x)) for y, x in indices[:, 1:]}
    assert pixels == {(y, x) for y in range(8, 20) for x in range(16, 28)}


def test_one_centred_ray_per_token():
    indices = patch_ray_indices(torch.tensor([[0, 0, 0]]), tokens=2, stride=8, rays_per_token=1)
    assert indices[:, 1:].tolist() == [[4, 4], [4, 12], [12, 4], [12, 12]]


def test_pooling_averages_each_token_cell():
    origins = torch.tensor([[0, 0, 0], [1, 8, 0]])
    indices = patch_ray_indices(origins, tokens=2, stride=4, rays_per_token=2)
    image = torch.randn(2, 16, 16, 3)
    values = image[indices[:, 0], indices[:, 1], indices[:, 2]]
    pooled = pool_patch_rays(values, num_patches=2, num_tokens=4)
    # Token (row 1, col 0) of patch 1 covers rows 12..15, cols 0..3; rays at offsets 1 and 3.
    expected = image[1, [13, 13, 15, 15], [1, 3, 1, 3]].mean(dim=0)
    torch.testing.assert_close(pooled[1, 2], expected)
    assert pooled.shape == (2, 4, 3)


def test_concat_keeps_random_rays_first():
    def bundle(n, value):
        return RayBundle(
            origins=torch.full((n, 3), value),
            directions=torch.full((n, 3), value),
            pixel_area=torch.ones(n, 1),
            camera_indices=torch.full((n, 1), int(value)),
            metadata={"directions_norm": torch.ones(n, 1)},
        )

    joined = concat_ray_bundles(bundle(3, 1.0), bundle(5, 2.0))
    assert joined.origins.shape == (8, 3) and joined.metadata["directions_norm"].shape == (8, 1)
    assert joined.camera_indices[:3].eq(1).all() and joined.camera_indices[3:].eq(2).all()
    assert joined.nears is None
