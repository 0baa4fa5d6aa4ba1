"""Points to voxels and back: the sparse U-Net sees one row per occupied voxel, the outputs are
per point.

A :class:`Voxelization` keeps, for every point, the row of its voxel, so per-voxel predictions
return to the points by indexing. Voxel coordinates are ``floor((xyz - origin) / voxel_size)``.

The voxel size is in the scene's units. Without one, each scene gets its own from its extent
(:func:`automatic_voxel_size`); several scenes trained together need one size in common units,
so :func:`resolve_voxel_size` refuses the automatic size for more than one scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UserFacingError

AUTOMATIC_DIVISIONS = 256
"""An automatic voxel is the scene's robust longest side / 256: the official 2 cm on a
5-6 m ScanNet room."""

EXTENT_PERCENTILES = (1.0, 99.0)
"""The extent of the central points per axis, so stray points (SfM outliers) do not set it."""


@dataclass
class Voxelization:
    """``coords`` ``(V, 3)`` int64 occupied voxels (sorted); ``point_to_voxel`` ``(N,)`` the row
    of each point's voxel; ``counts`` ``(V,)`` points per voxel."""

    coords: Tensor
    point_to_voxel: Tensor
    counts: Tensor
    voxel_size: float
    origin: Tensor

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def mean(self, point_values: Tensor) -> Tensor:
        """Per-voxel mean of per-point values ``(N, ...)`` (colours, features)."""
        flat = point_values.reshape(point_values.shape[0], -1).to(torch.float64)
        sums = torch.zeros(self.num_voxels, flat.shape[1], dtype=torch.float64).index_add_(0, self.point_to_voxel, flat)
        mean = sums / self.counts.clamp(min=1).unsqueeze(1)
        return mean.to(point_values.dtype if point_values.is_floating_point() else torch.float32).reshape(
            self.num_voxels, *point_values.shape[1:]
        )

    def majority(self, point_labels: Tensor, ignore: Optional[int] = None) -> Tensor:
        """Per-voxel most frequent label (the smallest on ties); ``ignore`` votes only where a
        voxel has nothing else."""
        labels = point_labels.long()
        valid = torch.ones_like(labels, dtype=torch.bool) if ignore is None else labels != ignore
        if (labels[valid] < 0).any():
            raise ValueError("labels must be >= 0 apart from the ignore label")
        num_classes = int(labels[valid].max()) + 1 if valid.any() else 1
        votes = torch.zeros(self.num_voxels, num_classes, dtype=torch.long)
        votes.index_put_((self.point_to_voxel[valid], labels[valid]), torch.ones_like(labels[valid]), accumulate=True)
        winner = votes.argmax(dim=1)  # the first maximum: the smallest label on ties
        if ignore is None:
            return winner
        return torch.where(votes.sum(dim=1) > 0, winner, torch.full_like(winner, ignore))

    def to_points(self, voxel_values: Tensor) -> Tensor:
        """Per-voxel values ``(V, ...)`` back to every point ``(N, ...)``."""
        return voxel_values[self.point_to_voxel]


def voxelize(xyz, voxel_size: float, origin=None) -> Voxelization:
    """The occupied voxels of points ``(N, 3)`` and each point's voxel."""
    points = torch.as_tensor(np.asarray(xyz) if not isinstance(xyz, Tensor) else xyz, dtype=torch.float64)
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3); got shape {tuple(points.shape)}")
    if not voxel_size > 0 or not np.isfinite(voxel_size):
        raise UserFacingError(f"the voxel size must be a positive number; got {voxel_size}")
    if origin is None:
        origin = points.min(dim=0).values if len(points) else torch.zeros(3, dtype=torch.float64)
    origin = torch.as_tensor(origin, dtype=torch.float64)
    grid = torch.floor((points - origin) / voxel_size).long()
    coords, point_to_voxel, counts = torch.unique(grid, dim=0, return_inverse=True, return_counts=True)
    return Voxelization(coords, point_to_voxel, counts, float(voxel_size), origin)


def robust_extent(xyz) -> np.ndarray:
    """Per-axis extent of the points between the :data:`EXTENT_PERCENTILES`."""
    points = np.asarray(xyz, dtype=np.float64)
    if len(points) == 0:
        raise UserFacingError("the point cloud is empty: there is nothing to voxelise")
    low, high = np.percentile(points, EXTENT_PERCENTILES, axis=0)
    return high - low


def automatic_voxel_size(xyz) -> float:
    """One scene's voxel: its robust longest side / :data:`AUTOMATIC_DIVISIONS`."""
    longest = float(robust_extent(xyz).max())
    if longest <= 0:
        raise UserFacingError("the points occupy a single position: give a voxel size explicitly")
    return longest / AUTOMATIC_DIVISIONS


def resolve_voxel_size(scenes: Sequence, voxel_size: Optional[float]) -> float:
    """The given size, checked; or one scene's automatic size. Several scenes need a given size."""
    if voxel_size is not None:
        if not voxel_size > 0 or not np.isfinite(voxel_size):
            raise UserFacingError(f"the voxel size must be a positive number; got {voxel_size}")
        return float(voxel_size)
    if len(scenes) != 1:
        raise UserFacingError(
            f"an automatic voxel size is per scene, and {len(scenes)} scenes were given: "
            "give one voxel size in the scenes' common units (e.g. --voxel-size 0.02 for 2 cm)"
        )
    return automatic_voxel_size(scenes[0])


def batch_coordinates(voxel_coords: Sequence[Tensor]) -> Tensor:
    """Several scenes' ``(V_i, 3)`` voxels as one ``(sum V_i, 4)`` batch, the scene index first."""
    if not voxel_coords:
        return torch.zeros(0, 4, dtype=torch.long)
    return torch.cat(
        [torch.cat([torch.full((len(c), 1), i, dtype=torch.long), c.long()], dim=1) for i, c in enumerate(voxel_coords)]
    )
