"""Which CLIP scale fits the object at each pixel, measured with DINO (a selection target).

The selection volume of 3D-OVS is meant to "determine the most suitable scale indicative of
the object size within a patch" (Sec. 3.1). Trained only through Eq. 3, it learns the scale
the field fits most easily instead, which at a small object is the coarse one, whose windows
are mostly background. This module measures object size directly: a pixel's CLIP feature at
scale s averages the Alg. 1 windows that cover it, so it is influenced by the pixels within
about one window side of it, weighted by how many covering windows include them (a triangle
of half-width ~1.25 p_s, the mean jittered window side). Its *purity* at that scale is the
weighted fraction of those pixels that DINO puts on the same object (token cosine above the
FDA shift b). Normalised over the scales it is a target selection: a small object's pixel
prefers the fine scale, a pixel inside a large surface weighs all scales alike.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

WINDOW_REACH = 1.25
"""Half-width of a scale's influence, in window sides: windows of side p, each side pushed out by a
uniform 0..p/4, cover a pixel from up to ~1.25 p away."""


def triangle_weights(radius: float, reach: int) -> Float[Tensor, "K"]:
    """``max(0, 1 - |d| / radius)`` at integer offsets ``d`` in [-reach, reach] (1 at d = 0 for any radius)."""
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float32).abs()
    return (1.0 - offsets / max(radius, 1e-6)).clamp_min(0.0)


@torch.no_grad()
def scale_purity(
    tokens: Float[Tensor, "h w C"],
    radii: Sequence[float],
    shift: float,
) -> Float[Tensor, "Ns h w"]:
    """Per token and scale: the triangle-weighted fraction of nearby tokens DINO-similar to it.

    ``radii`` are the scales' influence half-widths in token units. Tokens outside the grid
    do not count (the weights are renormalised over the tokens that exist).
    """
    unit = F.normalize(tokens.float(), dim=-1)
    height, width = unit.shape[:2]
    reach = max(0, max(math.ceil(radius) - 1 for radius in radii)) if radii else 0
    reach = min(reach, max(height, width) - 1)
    weights = [triangle_weights(radius, reach) for radius in radii]  # each [K]
    similar_sum = unit.new_zeros(len(radii), height, width)
    weight_sum = unit.new_zeros(len(radii), height, width)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            pair = torch.stack([weight[dy + reach] * weight[dx + reach] for weight in weights]).to(unit)
            if not bool((pair > 0).any()):
                continue
            y0, y1 = max(0, -dy), min(height, height - dy)
            x0, x1 = max(0, -dx), min(width, width - dx)
            if y0 >= y1 or x0 >= x1:
                continue
            here = unit[y0:y1, x0:x1]
            there = unit[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            similar = ((here * there).sum(-1) > shift).to(unit)
            similar_sum[:, y0:y1, x0:x1] += pair[:, None, None] * similar
            weight_sum[:, y0:y1, x0:x1] += pair[:, None, None]
    return similar_sum / weight_sum.clamp_min(1e-12)


def purity_selection(purity: Float[Tensor, "Ns *rest"]) -> Float[Tensor, "Ns *rest"]:
    """Purities normalised over the scales: the target selection (a pixel's own token is always similar,
    so every purity is positive)."""
    return purity / purity.sum(dim=0, keepdim=True).clamp_min(1e-12)
