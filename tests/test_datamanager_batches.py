"""The training batches of the datamanager on a tiny scene: what each ray carries, and where.

A batch holds random rays first (RGB, CLIP and relevancy targets) and then the rays of the FDA
patches, whose DINO tokens travel as one tensor per patch. The patch rays are checked against
the pixels they pass through: each token's rays must lie in that token's stride x stride cell
of the view the token was computed from, whether tokens come from the per-view cache or are
encoded from the patch crop at every step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nerfstudio.cameras.rays import RayBundle

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManager, Ovs3dDataManagerConfig
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.data.procedural import write_scene
from tiny_scene import tiny_scene_spec
from ovs3d_nerfstudio.features.relevancy import normalized_relevancy_maps
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig
from tiny_run import TINY_CLIP, TINY_DINO, TINY_TRAINING, below

DATAMANAGER = below("pipeline.datamanager.", TINY_TRAINING)
RAYS = DATAMANAGER["train_num_rays_per_batch"]
PATCHES, TOKENS, RAYS_PER_TOKEN = 2, 2, 2
FRACTIONS = (0.5, 0.25)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_scene(tiny_scene_spec(seed=1), tmp_path_factory.mktemp("batches") / "scene", mask_views=[0])


def build(scene: Path, cache: Path, dino_tokens: str, patch_downscale: float = 2) -> Ovs3dDataManager:
    config = Ovs3dDataManagerConfig(
        dataparser=Ovs3dDataParserConfig(data=scene),
        clip=ClipTeacherConfig(**TINY_CLIP, batch_size=4),
        dino=DinoTeacherConfig(**TINY_DINO),
        cache_dir=cache,
        **DATAMANAGER,
        clip_view_fraction=0.5,
        num_patches=PATCHES,
        patch_tokens=TOKENS,
        patch_downscale=patch_downscale,
        patch_rays_per_token=RAYS_PER_TOKEN,
        dino_tokens=dino_tokens,
    )
    config.pyramid.patch_fractions = FRACTIONS
    torch.manual_seed(0)
    return config.setup(device="cpu")


@pytest.fixture(scope="module")
def cached(scene, tmp_path_factory) -> Ovs3dDataManager:
    return build(scene, tmp_path_factory.mktemp("cache"), "cached")


@pytest.fixture(scope="module")
def on_the_fly(scene, tmp_path_factory) -> Ovs3dDataManager:
    return build(scene, tmp_path_factory.mktemp("cache"), "on-the-fly")


@pytest.fixture(scope="module")
def upsampled(scene, tmp_path_factory) -> Ovs3dDataManager:
    return build(scene, tmp_path_factory.mktemp("cache"), "cached", patch_downscale=0.5)


def same_rays(a: RayBundle, b: RayBundle) -> bool:
    return torch.allclose(a.origins, b.origins) and torch.allclose(a.directions, b.directions)


def patch_ray_pixels(datamanager: Ovs3dDataManager, bundle: RayBundle) -> torch.Tensor:
    """(view, y, x) of the patch-resolution pixel each ray passes through, found by matching its
    direction against the rays of every pixel of its view."""
    num_views, height, width = datamanager.patch_images.shape[:3]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = []
    for view, direction in zip(bundle.camera_indices[:, 0].tolist(), bundle.directions):
        grid = torch.stack([torch.full_like(ys, view), ys, xs], dim=-1).reshape(-1, 3)
        candidates = datamanager.patch_ray_generator(grid).directions
        distance, best = (candidates - direction).norm(dim=-1).min(dim=0)
        assert distance < 1e-5, "a patch ray passes through no pixel centre"
        pixels.append(grid[best])
    return torch.stack(pixels)


def check_patches(datamanager: Ovs3dDataManager, bundle: RayBundle) -> torch.Tensor:
    """Asserts the patch rays' layout [P, tokens, tokens, k, k] on the token grid; returns each
    patch's (view, first token row, first token column)."""
    stride = datamanager.dino_teacher.stride
    pixels = patch_ray_pixels(datamanager, bundle).reshape(PATCHES, TOKENS, TOKENS, RAYS_PER_TOKEN, RAYS_PER_TOKEN, 3)
    origins = []
    for patch in pixels:
        views, cells_y, cells_x = patch[..., 0], patch[..., 1] // stride, patch[..., 2] // stride
        assert bool((views == views.flatten()[0]).all()), "a patch spans two views"
        first_row, first_col = int(cells_y.min()), int(cells_x.min())
        for row in range(TOKENS):
            for col in range(TOKENS):
                # Every ray of token (row, col) lies in that token's cell, at k x k distinct pixels.
                assert bool((cells_y[row, col] == first_row + row).all())
                assert bool((cells_x[row, col] == first_col + col).all())
                assert len({tuple(p) for p in patch[row, col, ..., 1:].reshape(-1, 2).tolist()}) == RAYS_PER_TOKEN**2
        origins.append((int(views.flatten()[0]), first_row, first_col))
    return torch.tensor(origins)


def view_tokens(datamanager: Ovs3dDataManager, view: int) -> torch.Tensor:
    """DINO tokens of a whole patch-resolution view (cropped to whole tokens), [h, w, C]."""
    stride = datamanager.dino_teacher.stride
    image = datamanager.patch_images[view]
    height, width = image.shape[0] // stride * stride, image.shape[1] // stride * stride
    with torch.no_grad():
        return datamanager.dino_teacher.encode_dense(image[None, :height, :width].permute(0, 3, 1, 2).float() / 255.0)[0]


def test_reconstruction_batches_carry_rgb_of_any_view_only(cached):
    cached.segmentation_start = 10
    torch.manual_seed(1)
    bundle, batch = cached.next_train(step=0)
    assert set(batch) == {"image", "indices", "num_random_rays"}
    assert len(bundle) == RAYS and batch["image"].shape == (RAYS, 3) and batch["num_random_rays"] == RAYS
    view, y, x = batch["indices"].unbind(-1)
    torch.testing.assert_close(batch["image"], cached.ray_images[view, y, x].float() / 255.0)
    assert same_rays(bundle, cached.train_ray_generator(batch["indices"]))
    # Reconstruction draws from every view, not only those with CLIP features.
    assert not set(view.tolist()) <= set(cached.clip_views.tolist())


def test_segmentation_batch_random_rays_carry_their_pixels_targets(cached):
    cached.segmentation_start = 0
    torch.manual_seed(2)
    bundle, batch = cached.next_train(step=1)
    assert set(batch) == {"image", "indices", "num_random_rays", "clip_targets", "relevancy", "dino_tokens"}
    assert batch["num_random_rays"] == RAYS  # where the patch rays begin
    num_scales, num_labels = len(FRACTIONS), len(cached.train_dataparser_outputs.metadata["labels"])
    patch_rays = PATCHES * (TOKENS * RAYS_PER_TOKEN) ** 2
    assert len(bundle) == RAYS + patch_rays
    assert batch["image"].shape == (RAYS, 3) and batch["indices"].shape == (RAYS, 3)
    assert batch["clip_targets"].shape == (RAYS, num_scales, cached.clip_store.embed_dim)
    assert batch["relevancy"].shape == (RAYS, num_scales, num_labels)
    assert batch["dino_tokens"].shape == (PATCHES, TOKENS * TOKENS, cached.dino_teacher.feature_dim)

    view, y, x = batch["indices"].unbind(-1)
    assert same_rays(bundle[:RAYS], cached.train_ray_generator(batch["indices"]))  # random rays come first
    torch.testing.assert_close(batch["image"], cached.ray_images[view, y, x].float() / 255.0)
    clip_views = cached.clip_views.tolist()
    assert set(view.tolist()) <= set(clip_views)  # CLIP-supervised rays only from views with features
    for ray in range(RAYS):
        store_index = clip_views.index(int(view[ray]))
        dense = torch.stack([cached.clip_store.dense(store_index, s) for s in range(num_scales)])
        torch.testing.assert_close(batch["clip_targets"][ray], dense[:, y[ray], x[ray]], atol=1e-5, rtol=1e-4)
        maps = normalized_relevancy_maps(dense, cached.label_text_features())  # Eqs. 6-7 of the whole view
        torch.testing.assert_close(batch["relevancy"][ray], maps[:, :, y[ray], x[ray]], atol=2e-3, rtol=0)


def test_cached_patch_tokens_are_the_tokens_under_the_patch_rays(cached):
    cached.segmentation_start = 0
    torch.manual_seed(3)
    bundle, batch = cached.next_train(step=1)
    origins = check_patches(cached, bundle[RAYS:])
    for patch, (view, row, col) in enumerate(origins.tolist()):
        expected = view_tokens(cached, view)[row : row + TOKENS, col : col + TOKENS].reshape(TOKENS * TOKENS, -1)
        torch.testing.assert_close(batch["dino_tokens"][patch], expected, atol=2e-2, rtol=1e-2)  # cached in fp16


def test_on_the_fly_tokens_encode_the_patch_crop(on_the_fly):
    assert on_the_fly.dino_cache is None  # nothing encoded ahead of the steps
    on_the_fly.segmentation_start = 0
    torch.manual_seed(4)
    bundle, batch = on_the_fly.next_train(step=1)
    origins = check_patches(on_the_fly, bundle[RAYS:])
    stride, pixels = on_the_fly.dino_teacher.stride, TOKENS * on_the_fly.dino_teacher.stride
    for patch, (view, row, col) in enumerate(origins.tolist()):
        crop = on_the_fly.patch_images[view, row * stride : row * stride + pixels, col * stride : col * stride + pixels]
        with torch.no_grad():
            expected = on_the_fly.dino_teacher.encode_dense(crop[None].permute(0, 3, 1, 2).float() / 255.0)
        torch.testing.assert_close(batch["dino_tokens"][patch], expected.reshape(TOKENS * TOKENS, -1))
        # A crop's tokens see only the crop, so they differ from the whole view's at the same place.
        whole = view_tokens(on_the_fly, view)[row : row + TOKENS, col : col + TOKENS].reshape(TOKENS * TOKENS, -1)
        assert not torch.allclose(batch["dino_tokens"][patch], whole, atol=1e-3)


def test_eval_ray_batches_say_all_their_rays_are_random_rays(cached):
    bundle, batch = cached.next_eval(step=0)
    assert batch["num_random_rays"] == len(bundle) == batch["image"].shape[0]


def test_upsampled_patches_render_between_the_image_pixels(upsampled):
    """``patch-downscale 0.5``: patch images twice the size (bicubic), DINO tokens on that grid,
    and each patch ray through the point of the full-resolution camera it stands for."""
    from PIL import Image

    outputs = upsampled.train_dataparser_outputs
    cameras = outputs.cameras
    width, height = int(cameras.width[0]), int(cameras.height[0])
    assert upsampled.patch_images.shape[1:3] == (2 * height, 2 * width)
    with Image.open(outputs.image_filenames[1]) as image:
        expected = torch.from_numpy(np.array(image.convert("RGB").resize((2 * width, 2 * height), Image.BICUBIC)))
    assert torch.equal(upsampled.patch_images[1].cpu(), expected)
    stride = upsampled.dino_teacher.stride
    assert upsampled.dino_cache.shape[1:3] == (2 * height // stride, 2 * width // stride)

    upsampled.segmentation_start = 0
    torch.manual_seed(5)
    bundle, batch = upsampled.next_train(step=1)
    patch_rays = bundle[RAYS:]
    pixels = check_patches(upsampled, patch_rays)  # tokens tile the upsampled grid
    assert pixels.shape == (PATCHES, 3)
    ys, xs = patch_ray_pixels(upsampled, patch_rays)[:, 1:].unbind(-1)
    # Upsampled pixel centre (y + 0.5) lies at (y + 0.5) / 2 in full-resolution pixel units.
    coords = torch.stack([(ys + 0.5) / 2, (xs + 0.5) / 2], dim=-1).float()
    full = cameras.generate_rays(camera_indices=patch_rays.camera_indices, coords=coords)
    torch.testing.assert_close(patch_rays.directions, full.directions, atol=1e-5, rtol=0)
    assert batch["dino_tokens"].shape == (PATCHES, TOKENS * TOKENS, upsampled.dino_teacher.feature_dim)
