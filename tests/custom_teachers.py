"""Teachers brought by import path (``custom_teachers:make_clip_teacher``) in the tests.

They stand for a user's own models: small, dependency-free, and outside the package.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class ColourStatsClipTeacher:
    """Embeds a crop as its per-channel mean and standard deviation."""

    identity = "tests:colour-stats"
    embed_dim = 6

    def encode_crops(self, crops: Sequence[Tensor]) -> Tensor:
        return torch.stack([torch.cat([crop.mean(dim=(1, 2)), crop.std(dim=(1, 2))]) for crop in crops])

    def encode_text(self, texts: List[str]) -> Tensor:
        return torch.stack([torch.full((self.embed_dim,), float(len(text))) for text in texts])


class PooledColourDenseTeacher:
    """Average colour of each 4 x 4 cell."""

    identity = "tests:pooled-colour"
    feature_dim = 3
    stride = 4

    def encode_dense(self, images: Tensor) -> Tensor:
        return F.avg_pool2d(images, self.stride).permute(0, 2, 3, 1)


def make_clip_teacher() -> ColourStatsClipTeacher:
    return ColourStatsClipTeacher()


def make_dense_teacher() -> PooledColourDenseTeacher:
    return PooledColourDenseTeacher()


def make_not_a_teacher() -> object:
    return object()
