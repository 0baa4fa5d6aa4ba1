"""The plain-torch sparse convolution against torch's dense convolutions, its gradients, and
the degenerate inputs a point cloud produces (one voxel, isolated voxels, no voxels)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovs3d_nerfstudio.errors import ConfigError
from ovs3d_nerfstudio.vlg.sparse_conv import (
    SparseBatchNorm,
    SparseConv3d,
    SparseConvTranspose3d,
    SparseReLU,
    SparseTensor,
    BACKENDS,
    build_kernel_map,
    check_backend,
    concatenate,
    dense_conv_weight,
    dense_padding,
    downsample_coordinates,
    kernel_offsets,
)

GRID = 6
BATCH = 2


def random_sparse(channels: int, grid: int = GRID, fill: float = 0.4, seed: int = 0, dtype=torch.float32):
    """A random sparse tensor in a ``grid``-cube and the same data as a dense (B, C, G, G, G) grid."""
    generator = torch.Generator().manual_seed(seed)
    occupied = torch.rand(BATCH, grid, grid, grid, generator=generator) < fill
    coords = torch.nonzero(occupied)
    features = torch.randn(len(coords), channels, generator=generator, dtype=dtype)
    dense = torch.zeros(BATCH, channels, grid, grid, grid, dtype=dtype)
    dense[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]] = features
    return coords, features, dense


def at(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Rows of a dense (B, C, X, Y, Z) grid at coordinates (N, 4)."""
    return dense[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]]


def test_kernel_offsets_are_centred_for_odd_kernels_and_start_at_zero_for_two():
    assert kernel_offsets(1).tolist() == [[0, 0, 0]]
    three = kernel_offsets(3)
    assert three.shape == (27, 3) and three.min() == -1 and three.max() == 1
    assert three[13].tolist() == [0, 0, 0]  # the centre, in x-major order
    assert kernel_offsets(2).tolist()[:2] == [[0, 0, 0], [0, 0, 1]]
    assert kernel_offsets(5).min() == -2


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_submanifold_convolution_equals_conv3d_at_the_occupied_voxels(kernel_size):
    torch.manual_seed(0)
    coords, features, dense = random_sparse(3)
    conv = SparseConv3d(3, 4, kernel_size, bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    out = conv(SparseTensor(coords, features))
    expected = F.conv3d(dense, dense_conv_weight(conv.weight), conv.bias, padding=dense_padding(kernel_size))
    assert torch.equal(out.coords, coords) and out.tensor_stride == 1
    torch.testing.assert_close(out.features, at(expected, coords), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_strided_convolution_equals_conv3d_on_the_coarser_occupied_voxels(kernel_size):
    torch.manual_seed(1)
    coords, features, dense = random_sparse(3, seed=1)
    # Shifted by an even amount so floor division meets negative coordinates.
    shift = torch.tensor([0, 4, 4, 4])
    conv = SparseConv3d(3, 5, kernel_size, stride=2)
    out = conv(SparseTensor(coords - shift, features))

    expected_coords = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2], dim=1), dim=0)
    assert torch.equal(out.coords + shift // 2, expected_coords)
    assert out.tensor_stride == 2
    expected = F.conv3d(dense, dense_conv_weight(conv.weight), stride=2, padding=dense_padding(kernel_size))
    torch.testing.assert_close(out.features, at(expected, expected_coords), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_transposed_convolution_equals_conv_transpose3d_on_the_finer_coordinates(kernel_size):
    torch.manual_seed(2)
    fine_coords, fine_features, _ = random_sparse(2, seed=2)
    fine = SparseTensor(fine_coords, fine_features)
    coarse = SparseConv3d(2, 3, 2, stride=2)(fine)
    # Fresh coarse features, so the check does not depend on the downsampling's values.
    coarse = coarse.replace_features(torch.randn(len(coarse), 3))
    dense_coarse = torch.zeros(BATCH, 3, GRID // 2, GRID // 2, GRID // 2)
    c = coarse.coords
    dense_coarse[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = coarse.features

    up = SparseConvTranspose3d(3, 4, kernel_size, stride=2, bias=True)
    with torch.no_grad():
        up.bias.normal_()
    out = up(coarse, fine)
    padding = dense_padding(kernel_size)
    expected = F.conv_transpose3d(
        dense_coarse,
        dense_conv_weight(up.weight, transposed=True),
        up.bias,
        stride=2,
        padding=padding,
        output_padding=1 if kernel_size == 3 else 0,
    )
    assert expected.shape[-1] == GRID
    assert torch.equal(out.coords, fine_coords) and out.tensor_stride == 1
    torch.testing.assert_close(out.features, at(expected, fine_coords), rtol=1e-5, atol=1e-5)


def test_the_kernel_map_is_built_once_per_pair_of_coordinate_sets_and_shared_by_the_way_back():
    coords, features, _ = random_sparse(2, seed=3)
    fine = SparseTensor(coords, features)
    down = SparseConv3d(2, 2, 2, stride=2)
    first, second = down(fine), down(fine)
    assert first.cache is second.cache
    maps = [key for key in fine.cache if key[0] == "map"]
    assert len(maps) == 1
    SparseConvTranspose3d(2, 2, 2, stride=2)(first, fine)
    assert [key for key in fine.cache if key[0] == "map"] == maps


@pytest.mark.parametrize(
    "make",
    [
        lambda: SparseConv3d(2, 3, 3),
        lambda: SparseConv3d(2, 3, 2, stride=2),
        lambda: SparseConv3d(2, 3, 3, stride=2, bias=True),
    ],
    ids=["submanifold-3", "strided-2", "strided-3-bias"],
)
def test_gradients_of_the_convolutions_pass_gradcheck(make):
    coords, features, _ = random_sparse(2, grid=4, fill=0.25, seed=4, dtype=torch.float64)
    conv = make().double()
    features.requires_grad_(True)
    params = tuple(p for p in conv.parameters())
    assert torch.autograd.gradcheck(lambda f, *_: conv(SparseTensor(coords, f)).features, (features, *params))


def test_gradients_of_the_transposed_convolution_pass_gradcheck():
    coords, features, _ = random_sparse(2, grid=4, fill=0.25, seed=5, dtype=torch.float64)
    fine = SparseTensor(coords, features)
    coarse = SparseConv3d(2, 2, 2, stride=2).double()(fine)
    coarse_features = torch.randn(len(coarse), 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(27, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(coarse_features, weight):
        return BACKENDS["torch"](coarse.replace_features(coarse_features), weight, 3, 2, True, fine).features

    assert torch.autograd.gradcheck(run, (coarse_features, weight))


def test_one_voxel_sees_only_the_kernel_centre():
    conv = SparseConv3d(2, 3, 3, bias=True)
    features = torch.randn(1, 2)
    out = conv(SparseTensor(torch.tensor([[0, 5, -7, 2]]), features))
    torch.testing.assert_close(out.features, features @ conv.weight[13] + conv.bias)


def test_one_voxel_downsamples_to_its_parent_and_back():
    x = SparseTensor(torch.tensor([[1, 5, -7, 2]]), torch.randn(1, 2))
    coarse = SparseConv3d(2, 3, 2, stride=2)(x)
    assert coarse.coords.tolist() == [[1, 2, -4, 1]]
    # (5, -7, 2) = 2 * (2, -4, 1) + (1, 1, 0): kernel offset x-major index 4 * 1 + 2 * 1 + 0 = 6.
    conv_weight = SparseConv3d(2, 3, 2, stride=2)
    out = conv_weight(x)
    torch.testing.assert_close(out.features, x.features @ conv_weight.weight[6])
    back = SparseConvTranspose3d(3, 2, 2, stride=2)(coarse, x)
    assert back.coords.tolist() == x.coords.tolist() and back.features.shape == (1, 2)


def test_isolated_voxels_and_voxels_without_a_parent_get_zeros_plus_bias():
    # Two voxels far apart: a 3-kernel sees only each one's centre.
    x = SparseTensor(torch.tensor([[0, 0, 0, 0], [0, 10, 10, 10]]), torch.randn(2, 2))
    out = SparseConv3d(2, 2, 3)(x)
    # Upsampling onto fine voxels whose coarse parent is absent from the input: empty neighbourhoods.
    coarse = SparseTensor(torch.tensor([[0, 0, 0, 0]]), torch.randn(1, 3), tensor_stride=2)
    fine = SparseTensor(torch.tensor([[0, 9, 9, 9], [1, 0, 0, 0]]), torch.zeros(2, 1))
    up = SparseConvTranspose3d(3, 4, 2, stride=2, bias=True)
    with torch.no_grad():
        up.bias.fill_(0.5)
    upsampled = up(coarse, fine)
    assert out.features.shape == (2, 2)
    torch.testing.assert_close(upsampled.features, torch.full((2, 4), 0.5))


def test_no_voxels_give_no_voxels():
    empty = SparseTensor(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 3))
    for layer in (SparseConv3d(3, 2, 3), SparseConv3d(3, 2, 2, stride=2), SparseBatchNorm(3), SparseReLU()):
        out = layer(empty)
        assert len(out) == 0 and out.coords.shape == (0, 4)
    assert SparseConv3d(3, 2, 3)(empty).features.shape == (0, 2)
    assert downsample_coordinates(empty.coords, 2).shape == (0, 4)
    assert build_kernel_map(empty.coords, empty.coords, 3, 1).num_pairs() == 0


def test_batch_norm_and_relu_act_on_the_features_only():
    coords, features, _ = random_sparse(3, seed=6)
    x = SparseTensor(coords, features)
    norm = SparseBatchNorm(3)
    reference = torch.nn.BatchNorm1d(3)
    torch.testing.assert_close(norm(x).features, reference(features))
    assert torch.equal(norm(x).coords, coords)
    assert torch.equal(SparseReLU()(x).features, features.clamp(min=0))


def test_concatenation_needs_the_same_coordinates():
    coords, features, _ = random_sparse(2, seed=7)
    x = SparseTensor(coords, features)
    joined = concatenate(x, x.replace_features(features * 2))
    assert joined.features.shape == (len(x), 4)
    with pytest.raises(ValueError, match="same coordinates"):
        concatenate(x, SparseConv3d(2, 2, 2, stride=2)(x))


def test_bad_inputs_fail_with_a_message():
    with pytest.raises(ConfigError, match="unknown sparse-convolution backend 'spconv'; available: torch"):
        SparseConv3d(2, 2, 3, backend="spconv")
    assert check_backend("torch") is not None
    with pytest.raises(ValueError, match=r"coords must be \(N, 4\)"):
        SparseTensor(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="coords must be integers"):
        SparseTensor(torch.zeros(3, 4), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="expected 3 input channels; got 2"):
        SparseConv3d(3, 2, 3)(SparseTensor(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 2)))
    with pytest.raises(ValueError, match="not 2x finer"):
        x = SparseTensor(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 2))
        SparseConvTranspose3d(2, 2, 2)(x, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_convolutions_on_cuda_match_the_cpu_values_and_gradients():
    """Kernel maps, downsampling and both convolutions built from CUDA coordinates give the CPU's
    values and gradients (the empty set included)."""
    torch.manual_seed(0)
    coords, features, _ = random_sparse(3)
    down, up = SparseConv3d(3, 4, 2, stride=2), SparseConvTranspose3d(4, 3, 2, stride=2)
    results = {}
    for device in ("cpu", "cuda"):
        down.to(device), up.to(device)
        leaf = features.clone().to(device).requires_grad_(True)
        fine = SparseTensor(coords.to(device), leaf)
        out = up(down(fine), fine)
        out.features.square().sum().backward()
        results[device] = (out.features.detach().cpu(), leaf.grad.cpu(), down.weight.grad.cpu())
        down.zero_grad(), up.zero_grad()
    for cpu, cuda in zip(results["cpu"], results["cuda"]):
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-5)
    empty = SparseTensor(torch.zeros(0, 4, dtype=torch.long, device="cuda"), torch.zeros(0, 3, device="cuda"))
    assert len(SparseConv3d(3, 4, 3).cuda()(empty)) == 0
