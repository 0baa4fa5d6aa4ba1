"""Sparse 3D convolution in plain torch, for the 3D U-Net of the point-cloud path (3DSS-VLG).

No installable sparse-convolution library trains on CPU here (docs/vlg.md), so this module
builds what MinkowskiEngine does from torch operations alone:

- a :class:`SparseTensor` is a set of integer voxel coordinates ``(batch, x, y, z)`` with one
  feature row per voxel;
- a *kernel map* lists, for each kernel offset, the pairs (input voxel, output voxel) that the
  offset connects; coordinates are hashed to int64 keys, sorted once, and looked up with
  ``searchsorted``;
- a convolution is one gather -> matmul -> ``index_add_`` per kernel offset, so autograd gives
  the backward pass.

Coordinates of a level are in that level's own voxel units: downsampling by 2 maps ``x`` to
``floor(x / 2)``. An output voxel ``o`` of a convolution with kernel ``k`` and stride ``s``
reads the input voxels ``s * o + d`` for ``d`` in ``kernel_offsets(k)`` (``d`` in
``[-(k-1)//2, k//2]``). On a dense grid this is exactly ``F.conv3d(stride=s,
padding=(k-1)//2)`` at the occupied output voxels, and the transposed convolution (the same
pairs read the other way) is ``F.conv_transpose3d`` on the finer coordinate set it is given.

Weights are stored as ``(kernel_volume, in_channels, out_channels)``, offsets in x-major order;
:func:`dense_conv_weight` turns them into torch's dense layout.

``backend`` names the implementation of the convolutions; ``"torch"`` (this module) is the only
one now. A faster library (GPU) is added as another entry of :data:`BACKENDS`.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError

COORD_COLUMNS = 4
"""batch index, x, y, z."""


class KernelMap:
    """For each kernel offset, the input rows and output rows it connects (two int64 vectors)."""

    def __init__(self, pairs: List[Tuple[Tensor, Tensor]], num_inputs: int, num_outputs: int) -> None:
        self.pairs = pairs
        self.num_inputs = num_inputs
        self.num_outputs = num_outputs

    def __len__(self) -> int:
        return len(self.pairs)

    def num_pairs(self) -> int:
        return sum(int(inputs.numel()) for inputs, _ in self.pairs)


class SparseTensor:
    """Voxel coordinates ``(N, 4)`` int64 (batch, x, y, z), features ``(N, C)``, and the level.

    ``tensor_stride`` is the size of this level's voxels in voxels of the finest level. Tensors
    made with :meth:`replace_features` share the coordinates and their cache of kernel maps
    and coarser coordinate sets, so a U-Net builds each map once per forward pass.
    """

    def __init__(
        self,
        coords: Tensor,
        features: Tensor,
        tensor_stride: int = 1,
        _cache: Optional[Dict[tuple, object]] = None,
    ) -> None:
        if coords.dim() != 2 or coords.shape[1] != COORD_COLUMNS:
            raise ValueError(f"coords must be (N, 4) batch, x, y, z; got shape {tuple(coords.shape)}")
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise ValueError(f"coords must be integers; got {coords.dtype}")
        if features.dim() != 2 or features.shape[0] != coords.shape[0]:
            raise ValueError(
                f"features must be (N, C) with N = {coords.shape[0]} coordinates; got shape {tuple(features.shape)}"
            )
        if tensor_stride < 1:
            raise ValueError(f"tensor_stride must be >= 1; got {tensor_stride}")
        self.coords = coords.long()
        self.features = features
        self.tensor_stride = int(tensor_stride)
        self.cache: Dict[tuple, object] = {} if _cache is None else _cache

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.features.shape[1])

    def replace_features(self, features: Tensor) -> "SparseTensor":
        """Same coordinates (and cache), new features."""
        return SparseTensor(self.coords, features, self.tensor_stride, self.cache)

    def same_coordinates(self, other: "SparseTensor") -> bool:
        if self.cache is other.cache:
            return True
        return self.tensor_stride == other.tensor_stride and torch.equal(self.coords, other.coords)

    def __repr__(self) -> str:
        return f"SparseTensor(voxels={len(self)}, channels={self.num_channels}, tensor_stride={self.tensor_stride})"


def kernel_offsets(kernel_size: int) -> Tensor:
    """``(kernel_size**3, 3)`` offsets in x-major order, from ``-(k-1)//2`` to ``k//2``.

    Odd kernels are centred (MinkowskiEngine's convention); a kernel of 2 reads offsets 0 and 1,
    which is what a stride-2 downsampling needs.
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1; got {kernel_size}")
    axis = range(-((kernel_size - 1) // 2), kernel_size // 2 + 1)
    return torch.tensor(list(itertools.product(axis, axis, axis)), dtype=torch.long).reshape(-1, 3)


class _CoordinateHash:
    """Coordinates as int64 keys in a box that contains a reference set, sorted for lookup.

    Keys are only unique inside the box, so a query outside it is reported as absent rather
    than hashed (it could otherwise alias another voxel).
    """

    def __init__(self, coords: Tensor) -> None:
        if coords.shape[0] == 0:
            self.low = torch.zeros(COORD_COLUMNS, dtype=torch.long, device=coords.device)
            self.size = torch.ones(COORD_COLUMNS, dtype=torch.long, device=coords.device)
        else:
            self.low = coords.min(dim=0).values
            self.size = coords.max(dim=0).values - self.low + 1
        if math.prod(int(s) for s in self.size) >= 2**62:
            raise ValueError(f"coordinate range {self.size.tolist()} is too large to hash into int64 keys")
        self.keys = self.encode(coords)
        self.sorted_keys, self.order = torch.sort(self.keys)

    def encode(self, coords: Tensor) -> Tensor:
        shifted = coords - self.low
        key = shifted[:, 0]
        for axis in range(1, COORD_COLUMNS):
            key = key * self.size[axis] + shifted[:, axis]
        return key

    def lookup(self, queries: Tensor) -> Tuple[Tensor, Tensor]:
        """(query rows found, their rows in the reference set)."""
        inside = ((queries >= self.low) & (queries < self.low + self.size)).all(dim=1)
        candidates = torch.nonzero(inside, as_tuple=True)[0]
        if candidates.numel() == 0 or self.sorted_keys.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=queries.device)
            return empty, empty
        keys = self.encode(queries[candidates])
        position = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.sorted_keys.numel() - 1)
        found = self.sorted_keys[position] == keys
        return candidates[found], self.order[position[found]]


def downsample_coordinates(coords: Tensor, stride: int) -> Tensor:
    """The occupied voxels one level coarser: unique ``floor(xyz / stride)``, batch kept, sorted."""
    coarse = coords.clone()
    coarse[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor")
    if coarse.shape[0] == 0:
        return coarse
    # Keys order rows as (batch, x, y, z), so the unique keys give sorted coordinates.
    return coarse[first_of_each_key(_CoordinateHash(coarse).keys)]


def first_of_each_key(keys: Tensor) -> Tensor:
    """For each distinct key in increasing order, the first row that holds it."""
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    first = torch.full((unique_keys.numel(),), keys.numel(), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel(), device=keys.device), reduce="amin")
    return first


def build_kernel_map(fine: Tensor, coarse: Tensor, kernel_size: int, stride: int) -> KernelMap:
    """Pairs (fine row, coarse row) with ``fine = stride * coarse + offset``, one list per offset.

    For a convolution, ``fine`` is the input and ``coarse`` the output; a transposed
    convolution reads the same pairs the other way. With ``stride`` 1 both sets are usually
    the same (submanifold convolution).
    """
    offsets = kernel_offsets(kernel_size).to(fine.device)
    hashed = _CoordinateHash(fine)
    pairs: List[Tuple[Tensor, Tensor]] = []
    base = coarse.clone()
    base[:, 1:] = coarse[:, 1:] * stride
    for offset in offsets:
        query = base.clone()
        query[:, 1:] += offset
        coarse_rows, fine_rows = hashed.lookup(query)
        pairs.append((fine_rows, coarse_rows))
    return KernelMap(pairs, num_inputs=int(fine.shape[0]), num_outputs=int(coarse.shape[0]))


def gather_matmul_scatter(features: Tensor, weight: Tensor, kernel_map: KernelMap, transposed: bool) -> Tensor:
    """``out[o] = sum_offsets weight[offset]^T features[i]`` over the map's pairs.

    ``transposed`` swaps the roles: the map's coarse rows are read and its fine rows written.
    """
    num_out = kernel_map.num_inputs if transposed else kernel_map.num_outputs
    out = features.new_zeros((num_out, weight.shape[2]))
    for (fine_rows, coarse_rows), offset_weight in zip(kernel_map.pairs, weight):
        if fine_rows.numel() == 0:
            continue
        source, target = (coarse_rows, fine_rows) if transposed else (fine_rows, coarse_rows)
        out.index_add_(0, target, features.index_select(0, source) @ offset_weight)
    return out


def _cached(cache: Dict[tuple, object], key: tuple, build: Callable[[], object]):
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _cached_map(cache: Dict[tuple, object], other: Dict[tuple, object], key: tuple, build: Callable[[], KernelMap]):
    """A kernel map between two coordinate sets, cached on one of them under the other's id.

    The other set's cache is stored beside the map and compared by identity, because an id can
    be reused once its dict is freed.
    """
    full_key = key + (id(other),)
    hit = cache.get(full_key)
    if hit is None or hit[0] is not other:
        hit = (other, build())
        cache[full_key] = hit
    return hit[1]


def coarser(x: SparseTensor, stride: int) -> Tuple[Tensor, Dict[tuple, object]]:
    """The coordinates ``stride`` times coarser than ``x`` and their (shared) cache."""
    return _cached(x.cache, ("coarser", stride), lambda: (downsample_coordinates(x.coords, stride), {}))


def torch_convolve(
    x: SparseTensor, weight: Tensor, kernel_size: int, stride: int, transposed: bool, target: Optional[SparseTensor]
) -> SparseTensor:
    """The ``"torch"`` backend: kernel maps from sorted hashes, gather -> matmul -> scatter."""
    if transposed:
        assert target is not None
        fine_coords, fine_cache = target.coords, target.cache
        coarse_coords = x.coords
        kernel_map = _cached_map(
            fine_cache,
            x.cache,
            ("map", kernel_size, stride),
            lambda: build_kernel_map(fine_coords, coarse_coords, kernel_size, stride),
        )
        out = gather_matmul_scatter(x.features, weight, kernel_map, transposed=True)
        return SparseTensor(fine_coords, out, target.tensor_stride, fine_cache)
    if stride == 1:
        coarse_coords, coarse_cache = x.coords, x.cache
    else:
        coarse_coords, coarse_cache = coarser(x, stride)
    kernel_map = _cached_map(
        x.cache,
        coarse_cache,
        ("map", kernel_size, stride),
        lambda: build_kernel_map(x.coords, coarse_coords, kernel_size, stride),
    )
    out = gather_matmul_scatter(x.features, weight, kernel_map, transposed=False)
    return SparseTensor(coarse_coords, out, x.tensor_stride * stride, coarse_cache)


Convolve = Callable[[SparseTensor, Tensor, int, int, bool, Optional[SparseTensor]], SparseTensor]

BACKENDS: Dict[str, Convolve] = {"torch": torch_convolve}
"""Sparse-convolution implementations by name. One entry takes ``(input, weight (K, Cin,
Cout), kernel_size, stride, transposed, target)`` and returns the output SparseTensor (on
``target``'s coordinates when transposed), with the conventions of this module."""


def check_backend(name: str) -> Convolve:
    if name not in BACKENDS:
        raise ConfigError(f"unknown sparse-convolution backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]


class _SparseConvBase(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, backend: str
    ) -> None:
        super().__init__()
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1; got {kernel_size}, {stride}")
        check_backend(backend)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He initialisation over fan-out, as MinkowskiEngine's U-Nets initialise their kernels.
        fan_out = self.weight.shape[0] * self.out_channels
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / max(fan_out, 1)))
            if self.bias is not None:
                self.bias.zero_()

    def _finish(self, out: SparseTensor) -> SparseTensor:
        if self.bias is None:
            return out
        return out.replace_features(out.features + self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"bias={self.bias is not None}, backend={self.backend!r}"
        )


class SparseConv3d(_SparseConvBase):
    """Stride 1: submanifold convolution (output on the input's voxels). Stride s: output on the
    occupied voxels of the grid s times coarser."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = False,
        backend: str = "torch",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        _check_channels(x, self.in_channels)
        return self._finish(BACKENDS[self.backend](x, self.weight, self.kernel_size, self.stride, False, None))


class SparseConvTranspose3d(_SparseConvBase):
    """Upsampling onto a given finer coordinate set (the encoder's, for a U-Net skip)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 2,
        bias: bool = False,
        backend: str = "torch",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, backend)

    def forward(self, x: SparseTensor, target: SparseTensor) -> SparseTensor:
        _check_channels(x, self.in_channels)
        if target.tensor_stride * self.stride != x.tensor_stride:
            raise ValueError(
                f"target level (tensor_stride {target.tensor_stride}) is not {self.stride}x finer than the input "
                f"(tensor_stride {x.tensor_stride})"
            )
        return self._finish(BACKENDS[self.backend](x, self.weight, self.kernel_size, self.stride, True, target))


def _check_channels(x: SparseTensor, expected: int) -> None:
    if x.num_channels != expected:
        raise ValueError(f"expected {expected} input channels; got {x.num_channels}")


class SparseBatchNorm(nn.Module):
    """Batch norm over the voxels' features (each voxel one sample, as MinkowskiEngine)."""

    def __init__(self, num_channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_channels, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if len(x) == 0:
            return x
        return x.replace_features(self.norm(x.features))


class SparseReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(torch.relu(x.features))


def concatenate(first: SparseTensor, second: SparseTensor) -> SparseTensor:
    """Channel concatenation of two tensors on the same coordinates (a U-Net skip)."""
    if not first.same_coordinates(second):
        raise ValueError("concatenate needs two tensors on the same coordinates")
    return first.replace_features(torch.cat([first.features, second.features], dim=1))


def dense_conv_weight(weight: Tensor, transposed: bool = False) -> Tensor:
    """A ``(K, Cin, Cout)`` sparse kernel in torch's layout: ``(Cout, Cin, k, k, k)`` for
    ``F.conv3d``, ``(Cin, Cout, k, k, k)`` for ``F.conv_transpose3d``."""
    volume, in_channels, out_channels = weight.shape
    k = round(volume ** (1 / 3))
    if k**3 != volume:
        raise ValueError(f"kernel volume {volume} is not a cube")
    cube = weight.reshape(k, k, k, in_channels, out_channels)
    return cube.permute(3, 4, 0, 1, 2) if transposed else cube.permute(4, 3, 0, 1, 2)


def dense_padding(kernel_size: int) -> int:
    """The ``padding`` of F.conv3d / F.conv_transpose3d that matches :func:`kernel_offsets`."""
    return (kernel_size - 1) // 2
