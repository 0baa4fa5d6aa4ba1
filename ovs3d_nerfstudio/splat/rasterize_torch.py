"""A pure-torch rasterizer of 3D Gaussians: what ``gsplat.rasterization`` computes, on any device.

gsplat has no CPU rasterizer (its torch reference still calls CUDA kernels), so the splat
variant renders through this module on CPU, at test sizes. It follows gsplat 1.4.0's CUDA
kernels (``fully_fused_projection_fwd.cu``, ``isect_tiles.cu``, ``rasterize_to_pixels_fwd.cu``)
rule for rule, so a CPU run and a CUDA run of the same Gaussians agree:

* projection: world to camera, pinhole mean, EWA covariance ``J Sigma_c J^T`` with the
  Jacobian taken at the mean clamped to 1.3x the field of view, plus ``eps2d`` (0.3 px^2,
  a low-pass filter) on the diagonal;
* culling: camera depth outside [near, far], a non-positive determinant, a radius
  ``ceil(3 sqrt(lambda_max))`` at or below ``radius_clip``, or a square of that radius
  entirely outside the image;
* tiles: a Gaussian is composited only in the ``tile_size`` tiles its square touches,
  ``[floor((m - r) / t), ceil((m + r) / t))``, sorted front to back by camera depth
  (ties by index, as gsplat's stable radix sort);
* compositing, per pixel centre (x + 0.5, y + 0.5): ``sigma = d^T conic d / 2``,
  ``alpha = min(0.999, opacity exp(-sigma))``, skipped when sigma < 0 or alpha < 1/255;
  stop *before* the Gaussian that would take the transmittance T to <= 1e-4; the
  background is added with weight T and the alpha is ``1 - T``.

Gradients come from autograd through these rules (the cut-offs themselves pass none, as
in the CUDA backward). The projection is written here rather than taken from gsplat's
``_torch_impl``: culled Gaussians (behind the camera, at z = 0) get finite stand-in values
before any division, so they cannot put NaN into the gradients of the others, and the
culling matches the kernel's bounds (``z < near`` culled, ``det <= 0`` culled), where the
torch reference differs slightly. ``tests/test_splat_rasterize.py`` checks it against
gsplat's torch projection, a literal per-pixel loop, gradcheck, and gsplat on CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
"""gsplat's render modes: features only, accumulated depth ``sum w z``, expected depth
``sum w z / sum w``, or the features with one depth channel appended."""

ALPHA_MAX = 0.999
"""Largest alpha of one Gaussian at a pixel (kernel constant)."""
ALPHA_MIN = 1.0 / 255.0
"""Gaussians fainter than this at a pixel are skipped (kernel constant)."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel stops before the Gaussian that would take its transmittance to this or below."""


@dataclass
class Projection:
    """Every Gaussian seen from every camera; entries with ``radii == 0`` are culled."""

    means2d: Float[Tensor, "C N 2"]
    """Pixel coordinates of the projected means (culled entries: finite stand-ins)."""
    conics: Float[Tensor, "C N 3"]
    """Upper triangle (a, b, c) of the inverse of the blurred 2D covariance."""
    depths: Float[Tensor, "C N"]
    """Camera-space z of the means."""
    radii: Int[Tensor, "C N"]
    """Pixel radius of each Gaussian's square; 0 = culled."""


def quaternion_to_rotation(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Rotation matrices of (w, x, y, z) quaternions, normalised first (gsplat takes them unnormalised)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def covariances(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """World covariances ``R S S R^T`` (scales are standard deviations, already activated)."""
    rs = quaternion_to_rotation(quats) * scales[:, None, :]
    return rs @ rs.transpose(-1, -2)


def project_gaussians(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> Projection:
    """gsplat's ``fully_fused_projection`` for pinhole cameras (non-packed, classic mode)."""
    rotation, translation = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rotation, means) + translation[:, None, :]
    covars_c = rotation[:, None] @ covariances(quats, scales)[None] @ rotation.transpose(-1, -2)[:, None]
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    # Culled Gaussians divide by 1 instead of their z (possibly 0): finite values and gradients.
    z_safe = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # The Jacobian is taken at the mean clamped to 1.3x the field of view: Gaussians far off
    # screen would otherwise get huge, sheared footprints.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    tx = z_safe * torch.clamp(x / z_safe, min=-(cx / fx + 0.3 * tan_fovx), max=(width - cx) / fx + 0.3 * tan_fovx)
    ty = z_safe * torch.clamp(y / z_safe, min=-(cy / fy + 0.3 * tan_fovy), max=(height - cy) / fy + 0.3 * tan_fovy)
    zeros = torch.zeros_like(z_safe)
    jacobian = torch.stack(
        [fx / z_safe, zeros, -fx * tx / z_safe**2, zeros, fy / z_safe, -fy * ty / z_safe**2], dim=-1
    ).reshape(*z.shape, 2, 3)
    cov2d = jacobian @ covars_c @ jacobian.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    c = cov2d[..., 1, 1] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = a * c - b * b
    visible = in_depth & (det > 0)
    det_safe = torch.where(visible, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    with torch.no_grad():  # the radius only selects tiles: no gradient, as in the kernel
        half_trace = 0.5 * (a + c)
        largest_eigenvalue = half_trace + torch.sqrt(torch.clamp(half_trace**2 - det_safe, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(largest_eigenvalue.clamp_min(0)))
        mx, my = means2d.unbind(-1)
        on_image = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
        visible = visible & (radius > radius_clip) & on_image
        radii = torch.where(visible, radius, torch.zeros_like(radius)).int()
    return Projection(means2d=means2d, conics=conics, depths=z, radii=radii)


def tile_intersections(
    means2d: Float[Tensor, "C N 2"], radii: Int[Tensor, "C N"], depths: Float[Tensor, "C N"], tile_size: int, width: int, height: int
) -> Tuple[Int[Tensor, "I"], Int[Tensor, "I"]]:
    """``(tile, gaussian)`` of every intersection, in compositing order.

    ``tile`` counts over all cameras (``camera * tiles_per_image + row * tiles_wide + column``),
    ``gaussian`` indexes the flattened [C * N] projection. Sorted by tile, then front to back
    by depth, then by index (gsplat's stable sort of ``tile << 32 | depth bits``).
    """
    num_cameras, num_gaussians = radii.shape
    tiles_wide, tiles_high = math.ceil(width / tile_size), math.ceil(height / tile_size)
    with torch.no_grad():
        flat_radii = radii.reshape(-1)
        seen = torch.nonzero(flat_radii > 0).squeeze(-1)
        centre = means2d.detach().reshape(-1, 2)[seen] / tile_size
        reach = (flat_radii[seen].to(centre.dtype) / tile_size)[:, None]
        limits = torch.tensor([tiles_wide, tiles_high], dtype=centre.dtype, device=centre.device)
        first = torch.minimum(torch.floor(centre - reach).clamp_min(0), limits).long()
        last = torch.minimum(torch.ceil(centre + reach).clamp_min(0), limits).long()
        span = last - first  # tiles per axis, [I_seen, 2]
        counts = span[:, 0] * span[:, 1]
        owner = torch.repeat_interleave(torch.arange(len(seen), device=seen.device), counts)
        # Position of each intersection inside its Gaussian's rectangle, row by row.
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(owner), device=owner.device) - start[owner]
        column = first[owner, 0] + rank % span[owner, 0].clamp_min(1)
        row = first[owner, 1] + rank // span[owner, 0].clamp_min(1)
        gaussian = seen[owner]
        camera = gaussian // num_gaussians
        tile = camera * (tiles_wide * tiles_high) + row * tiles_wide + column
        by_depth = torch.sort(depths.detach().reshape(-1)[gaussian], stable=True).indices
        by_tile = torch.sort(tile[by_depth], stable=True).indices
        order = by_depth[by_tile]
    return tile[order], gaussian[order]


def composite_tiles(
    means2d: Float[Tensor, "G 2"],
    conics: Float[Tensor, "G 3"],
    opacities: Float[Tensor, "G"],
    values: Float[Tensor, "G D"],
    tile_ids: Int[Tensor, "I"],
    gaussian_ids: Int[Tensor, "I"],
    num_tiles: int,
    tiles_wide: int,
    tiles_per_image: int,
    tile_size: int,
    max_elements: int = 1 << 23,
) -> Tuple[Float[Tensor, "T P D"], Float[Tensor, "T P"]]:
    """Front-to-back compositing of each tile's sorted Gaussians: ``(sum_k w_k v_k, T_final)`` per pixel.

    ``G`` indexes the flattened projection; tiles are processed in chunks, each padded to its
    longest list, so a chunk holds about ``max_elements`` (pixel, Gaussian) pairs.
    """
    pixels = tile_size * tile_size
    dtype, device = values.dtype, values.device
    accumulated = values.new_zeros(num_tiles, pixels, values.shape[-1])
    transmittance = values.new_ones(num_tiles, pixels)
    if len(tile_ids) == 0:
        # Nothing to composite: stay on the graph (zero gradients), so that a training step
        # whose cameras see no Gaussian can still call backward.
        anchor = 0 * (means2d.sum() + conics.sum() + opacities.sum() + values.sum())
        return accumulated + anchor, transmittance + anchor
    active, counts = torch.unique_consecutive(tile_ids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(pixels, device=device)
    pixel_offset = torch.stack([local % tile_size, local // tile_size], dim=-1).to(dtype) + 0.5  # centres
    chunk_values, chunk_transmittance = [], []
    begin = 0
    while begin < len(active):
        # As many tiles as fit the budget at their own longest list (at least one tile).
        longest = torch.cummax(counts[begin:], 0).values
        fits = int(((torch.arange(1, len(longest) + 1, device=device) * longest * pixels) <= max_elements).sum())
        end = begin + max(fits, 1)
        longest_here = int(counts[begin:end].max())
        slot = torch.arange(longest_here, device=device)
        padded = starts[begin:end, None] + slot  # [T, K]
        real = slot < counts[begin:end, None]
        ids = gaussian_ids[padded.clamp_max(len(gaussian_ids) - 1)]  # [T, K]
        tile_in_image = active[begin:end] % tiles_per_image
        origin = torch.stack([tile_in_image % tiles_wide, tile_in_image // tiles_wide], dim=-1).to(dtype) * tile_size
        pixel = origin[:, None, :] + pixel_offset  # [T, P, 2]
        delta = means2d[ids][:, None, :, :] - pixel[:, :, None, :]  # [T, P, K, 2]
        conic = conics[ids][:, None]  # [T, 1, K, 3]
        sigma = 0.5 * (conic[..., 0] * delta[..., 0] ** 2 + conic[..., 2] * delta[..., 1] ** 2) + (
            conic[..., 1] * delta[..., 0] * delta[..., 1]
        )
        alpha = torch.clamp(opacities[ids][:, None] * torch.exp(-sigma), max=ALPHA_MAX)
        kept = (sigma >= 0) & (alpha >= ALPHA_MIN) & real[:, None, :]
        alpha = torch.where(kept, alpha, torch.zeros_like(alpha))
        with torch.no_grad():
            # T only falls along the list, so the Gaussians before the stop are exactly those
            # after which T is still above the threshold.
            before_stop = torch.cumprod(1 - alpha, dim=-1) > TRANSMITTANCE_MIN
        alpha = torch.where(before_stop, alpha, torch.zeros_like(alpha))
        transmitted = torch.cumprod(1 - alpha, dim=-1)
        weights = alpha * torch.cat([torch.ones_like(transmitted[..., :1]), transmitted[..., :-1]], dim=-1)
        chunk_values.append(weights @ values[ids])  # [T, P, K] x [T, K, D]
        chunk_transmittance.append(transmitted[..., -1])
        begin = end
    accumulated = accumulated.index_copy(0, active, torch.cat(chunk_values))
    transmittance = transmittance.index_copy(0, active, torch.cat(chunk_transmittance))
    return accumulated, transmittance


def untile(tiled: Float[Tensor, "T P D"], num_cameras: int, tiles_high: int, tiles_wide: int, tile_size: int, height: int, width: int) -> Float[Tensor, "C H W D"]:
    """Tiles of pixels back to images, cropped to the image size."""
    images = tiled.reshape(num_cameras, tiles_high, tiles_wide, tile_size, tile_size, -1)
    images = images.permute(0, 1, 3, 2, 4, 5).reshape(num_cameras, tiles_high * tile_size, tiles_wide * tile_size, -1)
    return images[:, :height, :width]


def rasterize_gaussians(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    colors: Float[Tensor, "*C N D"],
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    backgrounds: Optional[Float[Tensor, "C D"]] = None,
    render_mode: RenderMode = "RGB",
    max_elements: int = 1 << 23,
) -> Tuple[Float[Tensor, "C H W X"], Float[Tensor, "C H W 1"], Dict]:
    """``gsplat.rasterization`` with ``sh_degree=None``, ``packed=False``, classic mode, pinhole cameras.

    ``colors`` are any per-Gaussian channels (RGB, latents), [N, D] or per camera [C, N, D];
    ``opacities`` are activated (in [0, 1]); ``viewmats`` are world-to-camera. Returns the
    rendered channels (depth appended last for the ``+D`` modes, alone for ``D``/``ED``), the
    alphas and gsplat's meta keys that densification reads (``means2d`` keeps its graph, so
    ``means2d.retain_grad()`` gives the screen-space gradients).
    """
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"render_mode must be one of RGB, D, ED, RGB+D, RGB+ED, not {render_mode!r}")
    num_cameras, num_gaussians = viewmats.shape[0], means.shape[0]
    if colors.dim() == 2:
        colors = colors.expand(num_cameras, *colors.shape)
    if colors.shape[:2] != (num_cameras, num_gaussians):
        raise ValueError(f"colors must be [N, D] or [C, N, D] with C={num_cameras}, N={num_gaussians}, not {tuple(colors.shape)}")
    projection = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        radius_clip=radius_clip,
    )
    if render_mode in ("D", "ED"):
        colors = projection.depths[..., None]
        backgrounds = None
    elif render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, projection.depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(num_cameras, 1)], dim=-1)

    tiles_wide, tiles_high = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tile_ids, gaussian_ids = tile_intersections(
        projection.means2d, projection.radii, projection.depths, tile_size, width, height
    )
    accumulated, transmittance = composite_tiles(
        projection.means2d.reshape(-1, 2),
        projection.conics.reshape(-1, 3),
        opacities.expand(num_cameras, num_gaussians).reshape(-1),
        colors.reshape(num_cameras * num_gaussians, colors.shape[-1]),
        tile_ids,
        gaussian_ids,
        num_tiles=num_cameras * tiles_wide * tiles_high,
        tiles_wide=tiles_wide,
        tiles_per_image=tiles_wide * tiles_high,
        tile_size=tile_size,
        max_elements=max_elements,
    )
    rendered = untile(accumulated, num_cameras, tiles_high, tiles_wide, tile_size, height, width)
    remaining = untile(transmittance[..., None], num_cameras, tiles_high, tiles_wide, tile_size, height, width)
    if backgrounds is not None:
        rendered = rendered + remaining * backgrounds[:, None, None, :]
    alphas = 1 - remaining
    if render_mode in ("ED", "RGB+ED"):
        rendered = torch.cat([rendered[..., :-1], rendered[..., -1:] / alphas.clamp_min(1e-10)], dim=-1)
    meta = {
        "radii": projection.radii,
        "means2d": projection.means2d,
        "depths": projection.depths,
        "conics": projection.conics,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "tile_width": tiles_wide,
        "tile_height": tiles_high,
        "n_cameras": num_cameras,
        # gsplat's non-packed meta: no per-intersection ids (densification checks the keys).
        "camera_ids": None,
        "gaussian_ids": None,
    }
    return rendered, alphas, meta
