"""Scoring rendered CLIP features against text outside the trained label list.

The model's label map is ``argmax cos(T, F^)`` (Eq. 4); because the field renders
CLIP-space features, any new text can be scored without retraining. A free phrase has no
competing labels, so it is scored against canonical negatives (as LERF does): for each
negative, the pairwise softmax probability that the phrase beats it, minimised over the
negatives. High means "more like the phrase than like generic stuff".
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

CANONICAL_NEGATIVES: Tuple[str, ...] = ("object", "things", "stuff", "texture")
"""Generic phrases a free query is contrasted with."""


def query_relevancy(
    features: Float[Tensor, "*batch D"],
    query: Float[Tensor, "D"],
    negatives: Float[Tensor, "K D"],
    temperature: float = 0.1,
) -> Float[Tensor, "*batch 1"]:
    """Relevancy in [0, 1] of each rendered feature to ``query`` against ``negatives``.

    ``min_k softmax([cos(F, q), cos(F, n_k)] / temperature)[0]``; with ``temperature`` 0.1 a
    cosine lead of 0.1 over the closest negative gives ~0.73.
    """
    features = F.normalize(features, dim=-1, eps=1e-6)
    texts = F.normalize(torch.cat([query[None], negatives]), dim=-1)
    return relevancy_from_cosines(features @ texts.T, temperature)


def relevancy_from_cosines(cosines: Float[Tensor, "*batch K1"], temperature: float = 0.1) -> Float[Tensor, "*batch 1"]:
    """:func:`query_relevancy` from the cosines with ``[query, *negatives]`` (the splat variant
    computes them in its latent space, without the rendered features)."""
    pairwise = torch.sigmoid((cosines[..., :1] - cosines[..., 1:]) / temperature)
    return pairwise.min(dim=-1).values[..., None]


def label_boundaries(label_ids: Tensor) -> Tensor:
    """True where a pixel's label differs from its right or lower neighbour: [H, W] bool."""
    edges = torch.zeros_like(label_ids, dtype=torch.bool)
    horizontal = label_ids[:, 1:] != label_ids[:, :-1]
    vertical = label_ids[1:, :] != label_ids[:-1, :]
    edges[:, :-1] |= horizontal
    edges[:, 1:] |= horizontal
    edges[:-1, :] |= vertical
    edges[1:, :] |= vertical
    return edges


def overlay(
    rgb: Float[Tensor, "H W 3"], label_colours: Float[Tensor, "H W 3"], label_ids: Tensor, opacity: float = 0.5
) -> Float[Tensor, "H W 3"]:
    """Labels drawn semi-transparently over the image, with black boundaries between labels."""
    blended = (1.0 - opacity) * rgb + opacity * label_colours
    return torch.where(label_boundaries(label_ids)[..., None], torch.zeros_like(blended), blended)
