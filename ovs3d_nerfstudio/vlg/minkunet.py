"""MinkUNet layer graphs (14A, 18A, 34C) on the plain-torch sparse convolution.

The graph, as the official 3DSS-VLG code defines it through OpenScene and MinkowskiEngine
(facts read from it, nothing copied; docs/vlg.md):

- stem: 5x5x5 submanifold convolution to 32 channels, batch norm, ReLU;
- four encoder levels: a stride-2 kernel-2 convolution that keeps the channel count, batch
  norm, ReLU, then residual blocks widening to ``planes[0..3]``;
- four decoder levels: a stride-2 kernel-2 transposed convolution to ``planes[4..7]``, batch
  norm, ReLU, concatenation with the encoder's output at that level (the stem's for the last),
  then residual blocks;
- a final 1x1 convolution without bias.

A residual block is two 3x3x3 convolutions with batch norm, the first followed by ReLU, plus a
shortcut (a 1x1 convolution and batch norm where the channel count changes), then ReLU. No
convolution but the ones a user adds has a bias, so each architecture has an exact parameter
count (``PARAMETER_COUNTS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

from torch import nn

from ..errors import ConfigError
from .sparse_conv import (
    SparseBatchNorm,
    SparseConv3d,
    SparseConvTranspose3d,
    SparseReLU,
    SparseTensor,
    check_backend,
    concatenate,
)


@dataclass(frozen=True)
class MinkUNetSpec:
    """Channel widths (four encoder, four decoder levels) and residual blocks per level."""

    planes: Tuple[int, int, int, int, int, int, int, int]
    blocks: Tuple[int, int, int, int, int, int, int, int]
    stem_channels: int = 32
    stem_kernel: int = 5

    def __post_init__(self) -> None:
        if len(self.planes) != 8 or len(self.blocks) != 8:
            raise ValueError("a MinkUNet has 8 levels: planes and blocks need 8 entries each")
        if min(self.planes) < 1 or min(self.blocks) < 1 or self.stem_channels < 1:
            raise ValueError(f"widths and block counts must be >= 1: {self}")


ARCHITECTURES: Dict[str, MinkUNetSpec] = {
    "MinkUNet14A": MinkUNetSpec(planes=(32, 64, 128, 256, 128, 128, 96, 96), blocks=(1,) * 8),
    "MinkUNet18A": MinkUNetSpec(planes=(32, 64, 128, 256, 128, 128, 96, 96), blocks=(2,) * 8),
    "MinkUNet34C": MinkUNetSpec(planes=(32, 64, 128, 256, 256, 128, 96, 96), blocks=(2, 3, 4, 6, 2, 2, 2, 2)),
}
"""The paper's backbones (18A by default, 14A in an ablation) and OpenScene's 34C."""

PARAMETER_COUNTS: Dict[Tuple[str, int, int], int] = {
    ("MinkUNet14A", 3, 768): 8_096_288,
    ("MinkUNet18A", 3, 768): 15_564_960,
    ("MinkUNet34C", 3, 768): 37_927_840,
}
"""Trainable parameters for RGB in, a 768-d embedding out (running statistics excluded).
14A and 18A are the counts of docs/vlg.md; 34C follows from the same definitions."""


def resolve_architecture(architecture: Union[str, MinkUNetSpec]) -> MinkUNetSpec:
    if isinstance(architecture, MinkUNetSpec):
        return architecture
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown 3D U-Net {architecture!r}; available: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, backend: str) -> None:
        super().__init__()
        self.conv1 = SparseConv3d(in_channels, channels, 3, backend=backend)
        self.norm1 = SparseBatchNorm(channels)
        self.conv2 = SparseConv3d(channels, channels, 3, backend=backend)
        self.norm2 = SparseBatchNorm(channels)
        self.relu = SparseReLU()
        self.shortcut = (
            nn.Sequential(SparseConv3d(in_channels, channels, 1, backend=backend), SparseBatchNorm(channels))
            if in_channels != channels
            else nn.Identity()
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out.replace_features(out.features + self.shortcut(x).features))


def _blocks(in_channels: int, channels: int, count: int, backend: str) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(in_channels if i == 0 else channels, channels, backend) for i in range(count)))


class _Down(nn.Module):
    """Stride-2 kernel-2 convolution (same width), batch norm, ReLU, residual blocks."""

    def __init__(self, in_channels: int, channels: int, blocks: int, backend: str) -> None:
        super().__init__()
        self.conv = SparseConv3d(in_channels, in_channels, 2, stride=2, backend=backend)
        self.norm = SparseBatchNorm(in_channels)
        self.relu = SparseReLU()
        self.blocks = _blocks(in_channels, channels, blocks, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.blocks(self.relu(self.norm(self.conv(x))))


class _Up(nn.Module):
    """Stride-2 kernel-2 transposed convolution, batch norm, ReLU, skip concatenation, blocks."""

    def __init__(self, in_channels: int, skip_channels: int, channels: int, blocks: int, backend: str) -> None:
        super().__init__()
        self.conv = SparseConvTranspose3d(in_channels, channels, 2, stride=2, backend=backend)
        self.norm = SparseBatchNorm(channels)
        self.relu = SparseReLU()
        self.blocks = _blocks(channels + skip_channels, channels, blocks, backend)

    def forward(self, x: SparseTensor, skip: SparseTensor) -> SparseTensor:
        up = self.relu(self.norm(self.conv(x, skip)))
        return self.blocks(concatenate(up, skip))


class MinkUNet(nn.Module):
    """A sparse 3D U-Net: per-voxel features in, per-voxel ``out_channels`` out, same voxels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        architecture: Union[str, MinkUNetSpec] = "MinkUNet18A",
        backend: str = "torch",
    ) -> None:
        super().__init__()
        spec = resolve_architecture(architecture)
        check_backend(backend)
        self.spec = spec
        self.backend = backend
        self.in_channels = in_channels
        self.out_channels = out_channels
        width = spec.stem_channels
        self.stem = nn.Sequential(
            SparseConv3d(in_channels, width, spec.stem_kernel, backend=backend), SparseBatchNorm(width), SparseReLU()
        )
        skip_widths: List[int] = [width]
        downs = []
        for level in range(4):
            downs.append(_Down(width, spec.planes[level], spec.blocks[level], backend))
            width = spec.planes[level]
            skip_widths.append(width)
        self.down = nn.ModuleList(downs)
        ups = []
        for level in range(4):
            channels = spec.planes[4 + level]
            ups.append(_Up(width, skip_widths[3 - level], channels, spec.blocks[4 + level], backend))
            width = channels
        self.up = nn.ModuleList(ups)
        self.final = SparseConv3d(width, out_channels, 1, backend=backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.tensor_stride != 1:
            raise ValueError(f"MinkUNet takes the finest level (tensor_stride 1); got {x.tensor_stride}")
        levels = [self.stem(x)]
        for down in self.down:
            levels.append(down(levels[-1]))
        out = levels.pop()
        for up in self.up:
            out = up(out, levels.pop())
        return self.final(out)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
