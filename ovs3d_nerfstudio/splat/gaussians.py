"""Initial sizes of the splat variant's Gaussians: distances to their nearest neighbours.

Chunked ``torch.cdist`` rather than splatfacto's scikit-learn call (a dependency nerfstudio does
not declare).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def nearest_neighbour_distance(points: Float[Tensor, "N 3"], k: int, chunk: int = 4096) -> Float[Tensor, "N"]:
    """Mean distance of each point to its ``k`` nearest others (chunked ``cdist``; no scikit-learn)."""
    k = min(k, len(points) - 1)
    if k < 1:
        return points.new_ones(len(points))
    distances = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], points)
        distances.append(d.topk(k + 1, dim=-1, largest=False).values[:, 1:].mean(-1))  # drop the point itself
    return torch.cat(distances)
