"""A fixed label palette: label i always gets colour i, in the viewer, videos and legends."""

from __future__ import annotations

import colorsys
from typing import List

import torch
from jaxtyping import Float, Int
from torch import Tensor

_BASE_COLOURS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)  # fmt: skip
"""Twenty well-separated colours (a common qualitative scheme), then golden-ratio hues."""


def palette(num_labels: int) -> Float[Tensor, "num_labels 3"]:
    """Colours in [0, 1] for ``num_labels`` labels; the first ones never change with the count."""
    colours: List[tuple] = [tuple(c / 255.0 for c in rgb) for rgb in _BASE_COLOURS[:num_labels]]
    golden = 0.618033988749895
    for index in range(len(colours), num_labels):
        hue = (index * golden) % 1.0
        colours.append(colorsys.hsv_to_rgb(hue, 0.65, 0.95))
    return torch.tensor(colours, dtype=torch.float32).reshape(num_labels, 3)


def colourize(label_ids: Int[Tensor, "*bs"], colours: Float[Tensor, "C 3"]) -> Float[Tensor, "*bs 3"]:
    """Maps integer label ids to palette colours (a float RGB image the viewer can show)."""
    return colours.to(label_ids.device)[label_ids]
