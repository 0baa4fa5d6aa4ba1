"""Square patches for the FDA loss: where they are, which rays they render, how rays pool to tokens.

A patch of ``tokens x tokens`` DINO tokens covers ``tokens * stride`` pixels per side of the
image downsampled for patches (paper: 256 px patches of images downsampled 5x, 32x32 tokens
of DINO's stride 8). Each token cell renders ``k x k`` evenly spaced rays whose rendered
features are averaged into that token (official code: every pixel, k = stride = 8).
Patches start on the token grid so cached per-view DINO tokens can be cropped exactly.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle

from ovs3d_nerfstudio.errors import ConfigError


def check_patch_fits(height: int, width: int, patch_pixels: int) -> None:
    """A patch of ``patch_pixels`` must fit the images at the patch resolution."""
    if patch_pixels > height or patch_pixels > width:
        raise ConfigError(
            f"FDA patches of {patch_pixels} px do not fit images of {width}x{height} px at the patch "
            "resolution; lower --pipeline.datamanager.patch-tokens or --pipeline.datamanager.patch-downscale."
        )


def check_rays_per_token(rays_per_token: int, stride: int) -> None:
    """A token cell of ``stride`` pixels renders between 1 and ``stride`` rays per side."""
    if not 1 <= rays_per_token <= stride:
        raise ConfigError(
            f"--pipeline.datamanager.patch-rays-per-token {rays_per_token}: must be between 1 (one ray per DINO "
            f"token, the official code) and the DINO stride {stride} (every pixel)."
        )


def sample_patch_origins(
    num_patches: int, num_views: int, height: int, width: int, patch_pixels: int, stride: int, device
) -> Int[Tensor, "P 3"]:
    """Random (view, y0, x0) with patches inside the image and y0, x0 on the token grid."""
    check_patch_fits(height, width, patch_pixels)
    views = torch.randint(0, num_views, (num_patches,), device=device)
    y0 = torch.randint(0, (height - patch_pixels) // stride + 1, (num_patches,), device=device) * stride
    x0 = torch.randint(0, (width - patch_pixels) // stride + 1, (num_patches,), device=device) * stride
    return torch.stack([views, y0, x0], dim=-1)


def patch_ray_indices(origins: Int[Tensor, "P 3"], tokens: int, stride: int, rays_per_token: int) -> Int[Tensor, "R 3"]:
    """Pixel indices (view, y, x) of every ray of every patch, ordered [P, tokens, tokens, k, k]."""
    check_rays_per_token(rays_per_token, stride)
    device = origins.device
    # k evenly spaced offsets inside a stride-wide cell, centred (k = stride gives every pixel).
    offsets = (torch.arange(rays_per_token, device=device) * stride + stride // 2) // rays_per_token
    cells = torch.arange(tokens, device=device) * stride
    along = (cells[:, None] + offsets[None, :])  # [tokens, k]
    ys = origins[:, 1, None, None, None, None] + along[None, :, None, :, None]
    xs = origins[:, 2, None, None, None, None] + along[None, None, :, None, :]
    shape = (origins.shape[0], tokens, tokens, rays_per_token, rays_per_token)
    views = origins[:, 0, None, None, None, None].expand(shape)
    return torch.stack([views, ys.expand(shape), xs.expand(shape)], dim=-1).reshape(-1, 3)


def pool_patch_rays(values: Float[Tensor, "R D"], num_patches: int, num_tokens: int) -> Float[Tensor, "P N D"]:
    """Averages each token cell's rays (order of :func:`patch_ray_indices`): [P, num_tokens, D]."""
    return values.reshape(num_patches, num_tokens, -1, values.shape[-1]).mean(dim=2)


def concat_ray_bundles(first: RayBundle, second: RayBundle) -> RayBundle:
    """One bundle for one forward pass: random rays first, then patch rays."""

    def cat(a, b):
        return None if a is None or b is None else torch.cat([a, b], dim=0)

    return RayBundle(
        origins=cat(first.origins, second.origins),
        directions=cat(first.directions, second.directions),
        pixel_area=cat(first.pixel_area, second.pixel_area),
        camera_indices=cat(first.camera_indices, second.camera_indices),
        nears=cat(first.nears, second.nears),
        fars=cat(first.fars, second.fars),
        metadata={key: torch.cat([value, second.metadata[key]], dim=0) for key, value in first.metadata.items()},
        times=cat(first.times, second.times),
    )
