"""A minimal import-path teacher, as used in docs/teachers.md.

A teacher is any object with the attributes and method of the protocols in
``ovs3d_nerfstudio/teachers/base.py``; a *factory* is a callable with no arguments that
returns one. Pass ``module:factory`` (module importable, e.g. via PYTHONPATH):

    PYTHONPATH=docs/scripts ns-train ovs3d --pipeline.datamanager.dino.source example_teachers:colour_dino ...

This one is a toy stand-in for DINO (mean colour and local contrast of each 8x8 cell); a
real one would wrap e.g. a DINOv2 or SAM image encoder the same way.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


class CellColourTeacher:
    """DenseTeacher: one token per ``stride`` x ``stride`` cell."""

    def __init__(self, stride: int = 8, contrast_weight: float = 2.0) -> None:
        self.stride = stride
        self.feature_dim = 6
        self.contrast_weight = contrast_weight
        # Part of the feature-cache key (with the settings that change the output).
        self.identity = f"example:cell-colour:stride={stride}:contrast={contrast_weight}"

    @torch.no_grad()
    def encode_dense(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1], sides multiples of ``stride`` -> [B, H/stride, W/stride, 6]."""
        mean = F.avg_pool2d(images, self.stride)
        spread = (F.avg_pool2d(images**2, self.stride) - mean**2).clamp_min(0).sqrt()
        tokens = torch.cat([mean - 0.5, self.contrast_weight * spread], dim=1)
        return tokens.permute(0, 2, 3, 1)


def colour_dino() -> CellColourTeacher:
    """Factory with the default settings."""
    return CellColourTeacher()


# Settings go into the factory: one module-level callable per variant.
colour_dino_stride4 = functools.partial(CellColourTeacher, stride=4)
