"""Stage 1 of 3DSS-VLG: multi-view fusion of pixel features into points, and pseudo labels.

(E1) A point's 2D feature is the mean of the pixel features of the views that see it: it
projects inside the image, at least :data:`BORDER_PIXELS_AT_240` pixels from the border (at 240
rows; scaled with the feature resolution), and passes the occlusion test ``|z - D| <= 0.25 D``
against the view's depth ``D`` at that pixel. (E2) logits are the fused feature's dot products
with the vocabulary's text features. (E3) classes outside the scene's labels are masked out;
the pseudo label is the argmax; points no view sees are unlabelled (``IGNORE``).

The pixel features are the Alg. 1 window store of ``ns-train ovs3d`` (same images, teacher and
settings, so the same feature-cache entries); each scale's pixel feature is L2-normalised and
the scales are averaged, as OpenSeg's pixel embeddings are unit vectors in the paper.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..data.labels import IGNORE
from ..features.clip_pyramid import ClipFeatureStore
from .views import project

BORDER_PIXELS_AT_240 = 10.0
"""The official margin: points projecting within 10 px of the border of a 240-row image are not seen."""
RELATIVE_DEPTH_TOLERANCE = 0.25
"""The official occlusion test: seen when ``|z - D| <= 0.25 D``."""

DepthProvider = Callable[[int], Tensor]
"""View index -> ``(H, W)`` depth along the optical axis at feature resolution (inf/0 = unknown)."""


def border_pixels(height: int) -> float:
    """The border margin at ``height`` rows: 10 px at 240 rows, scaled."""
    return BORDER_PIXELS_AT_240 * height / 240.0


def visibility(
    u: Float[Tensor, "N"],
    v: Float[Tensor, "N"],
    z: Float[Tensor, "N"],
    depth: Float[Tensor, "H W"],
    border: float,
    tolerance: float = RELATIVE_DEPTH_TOLERANCE,
) -> Tuple[Bool[Tensor, "N"], Int[Tensor, "N"], Int[Tensor, "N"]]:
    """Which points a view sees (inside the image with the margin, in front, and within
    ``tolerance`` of the view's depth, which must be known: finite and positive), and their
    pixel rows and columns (0 where not seen)."""
    height, width = depth.shape
    inside = (u >= border) & (u < width - border) & (v >= border) & (v < height - border) & (z > 0)
    row = torch.where(inside, v.floor().long().clamp(0, height - 1), 0)
    col = torch.where(inside, u.floor().long().clamp(0, width - 1), 0)
    reference = depth[row, col]
    known = torch.isfinite(reference) & (reference > 0)
    seen = inside & known & ((z - reference).abs() <= tolerance * reference)
    return seen, torch.where(seen, row, 0), torch.where(seen, col, 0)


def zbuffer_depth(
    u: Float[Tensor, "N"], v: Float[Tensor, "N"], z: Float[Tensor, "N"], height: int, width: int
) -> Float[Tensor, "H W"]:
    """The nearest point's depth per pixel (inf where no point projects): the occlusion
    reference when the data has no depth. A point is never occluded by itself."""
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height) & (z > 0)
    flat = v[inside].floor().long() * width + u[inside].floor().long()
    depth = torch.full((height * width,), float("inf"), dtype=z.dtype)
    depth.scatter_reduce_(0, flat, z[inside], reduce="amin")
    return depth.view(height, width)


def pixel_features(store: ClipFeatureStore, view: int, rows: Tensor, cols: Tensor) -> Float[Tensor, "R D"]:
    """The Alg. 1 pixel features at ``(rows, cols)`` of one view: each scale L2-normalised, the
    scales averaged. Each distinct pixel is gathered once (points outnumber pixels), and no
    whole image is densified, so memory stays small at any resolution."""
    pixels, inverse = torch.unique(rows * store.width + cols, return_inverse=True)
    unique_rows, unique_cols = pixels // store.width, pixels % store.width
    per_scale = store.gather(torch.full_like(unique_rows, view), unique_rows, unique_cols)  # (P, Ns, D)
    return F.normalize(per_scale, dim=-1).mean(dim=1)[inverse]


def fusion_logits(fused: Float[Tensor, "N D"], text: Float[Tensor, "C D"]) -> Float[Tensor, "N C"]:
    """(E2): dot products of the fused features with the unit text features."""
    return fused @ F.normalize(text, dim=-1).T


def pseudo_labels(
    logits: Float[Tensor, "N C"], covered: Bool[Tensor, "N"], scene_classes: Optional[Bool[Tensor, "C"]] = None
) -> Int[Tensor, "N"]:
    """(E3): argmax over the classes of the scene (all when ``scene_classes`` is None);
    ``IGNORE`` for points no view sees."""
    if scene_classes is not None:
        if not bool(scene_classes.any()):
            raise ValueError("the scene mask excludes every class")
        logits = logits.masked_fill(~scene_classes, float("-inf"))
    return torch.where(covered, logits.argmax(dim=1), torch.full_like(covered, IGNORE, dtype=torch.long))


def fuse(
    xyz: Float[Tensor, "N 3"],
    store: ClipFeatureStore,
    camera_to_worlds: Float[Tensor, "V 3 4"],
    intrinsics: Float[Tensor, "V 4"],
    downscale: float,
    depth: Optional[DepthProvider],
    on_view: Optional[Callable[[], None]] = None,
) -> Tuple[Float[Tensor, "N D"], Int[Tensor, "N"]]:
    """(E1) over every view of ``store``: the fused ``(N, D)`` features (zero where unseen) and
    the number of views that see each point. ``depth`` None uses a z-buffer of the points."""
    num_points = xyz.shape[0]
    summed = torch.zeros(num_points, store.embed_dim, dtype=torch.float32)
    counts = torch.zeros(num_points, dtype=torch.int64)
    height, width = store.height, store.width
    border = border_pixels(height)
    for view in range(store.num_views):
        u, v, z = project(xyz, camera_to_worlds[view], intrinsics[view], downscale)
        reference = depth(view) if depth is not None else zbuffer_depth(u, v, z, height, width)
        if tuple(reference.shape) != (height, width):
            raise ValueError(f"view {view}: depth {tuple(reference.shape)} but features {(height, width)}")
        seen, rows, cols = visibility(u, v, z, reference.to(z.dtype), border)
        index = seen.nonzero().squeeze(1)
        if len(index):
            summed.index_add_(0, index, pixel_features(store, view, rows[index], cols[index]))
            counts[index] += 1
        if on_view is not None:
            on_view()
    fused = summed / counts.clamp(min=1).unsqueeze(1).to(summed.dtype)
    return fused, counts

