"""MinkUNet layer graphs: the parameter counts of the design notes, and the symmetries a correct
sparse U-Net has (voxel order, translation by its coarsest voxel, batch independence)."""

from __future__ import annotations

import pytest
import torch

from ovs3d_nerfstudio.errors import ConfigError
from ovs3d_nerfstudio.vlg.minkunet import (
    ARCHITECTURES,
    PARAMETER_COUNTS,
    MinkUNet,
    MinkUNetSpec,
    count_parameters,
)
from ovs3d_nerfstudio.vlg.sparse_conv import SparseTensor

TINY = MinkUNetSpec(planes=(4, 6, 8, 8, 6, 6, 4, 4), blocks=(1, 1, 1, 1, 1, 1, 1, 1), stem_channels=4)


@pytest.mark.parametrize("name", ["MinkUNet14A", "MinkUNet18A", "MinkUNet34C"])
def test_parameter_counts_match_the_design_notes(name):
    # On the meta device: the count without allocating 15-38 million weights.
    with torch.device("meta"):
        net = MinkUNet(3, 768, name)
    assert count_parameters(net) == PARAMETER_COUNTS[(name, 3, 768)]


def test_the_notes_numbers_are_the_ones_asserted():
    assert PARAMETER_COUNTS[("MinkUNet18A", 3, 768)] == 15_564_960
    assert PARAMETER_COUNTS[("MinkUNet14A", 3, 768)] == 8_096_288
    assert set(ARCHITECTURES) == {"MinkUNet14A", "MinkUNet18A", "MinkUNet34C"}


def test_the_layer_graph_has_the_official_shape():
    with torch.device("meta"):
        net = MinkUNet(3, 768, "MinkUNet18A")
    assert tuple(net.stem[0].weight.shape) == (125, 3, 32)  # 5x5x5 stem
    assert [down.conv.weight.shape[1:] for down in net.down] == [(32, 32), (32, 32), (64, 64), (128, 128)]
    assert [down.conv.kernel_size for down in net.down] == [2] * 4
    # Transposed convolutions to planes[4..7]; blocks after the skip concatenation.
    assert [tuple(up.conv.weight.shape[1:]) for up in net.up] == [(256, 128), (128, 128), (128, 96), (96, 96)]
    assert [up.blocks[0].conv1.in_channels for up in net.up] == [128 + 128, 128 + 64, 96 + 32, 96 + 32]
    assert [len(up.blocks) for up in net.up] == [2] * 4
    assert net.final.kernel_size == 1 and net.final.bias is None


def random_cloud(num_points: int = 300, extent: int = 40, batch: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    scene = torch.randint(0, batch, (num_points, 1), generator=generator)
    coords = torch.cat([scene, torch.randint(0, extent, (num_points, 3), generator=generator)], dim=1)
    coords = torch.unique(coords, dim=0)
    return coords, torch.rand(len(coords), 3, generator=generator) * 2 - 1


def test_forward_keeps_the_voxels_and_gives_every_parameter_a_gradient():
    torch.manual_seed(0)
    coords, colours = random_cloud()
    net = MinkUNet(3, 5, TINY)
    out = net(SparseTensor(coords, colours))
    assert torch.equal(out.coords, coords) and out.features.shape == (len(coords), 5)
    out.features.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_output_follows_the_voxel_order():
    torch.manual_seed(1)
    coords, colours = random_cloud(seed=1)
    net = MinkUNet(3, 5, TINY)
    permutation = torch.randperm(len(coords))
    out = net(SparseTensor(coords, colours)).features
    permuted = net(SparseTensor(coords[permutation], colours[permutation])).features
    torch.testing.assert_close(permuted, out[permutation], rtol=1e-5, atol=1e-5)


def test_output_is_unchanged_by_a_shift_of_whole_coarsest_voxels_and_by_other_scenes():
    torch.manual_seed(2)
    coords, colours = random_cloud(seed=2)
    net = MinkUNet(3, 5, TINY).eval()  # running statistics: no coupling through the batch
    out = net(SparseTensor(coords, colours)).features
    shifted = coords + torch.tensor([0, 16, -32, 48])  # the coarsest voxel is 16 voxels wide
    torch.testing.assert_close(net(SparseTensor(shifted, colours)).features, out, rtol=1e-5, atol=1e-5)
    other, other_colours = random_cloud(seed=3)
    other[:, 0] = 1
    both = net(SparseTensor(torch.cat([coords, other]), torch.cat([colours, other_colours]))).features
    torch.testing.assert_close(both[: len(coords)], out, rtol=1e-5, atol=1e-5)


def test_bad_architecture_and_input_fail_with_a_message():
    available = "available: MinkUNet14A, MinkUNet18A, MinkUNet34C"
    with pytest.raises(ConfigError, match=f"unknown 3D U-Net 'MinkUNet99'; {available}"):
        MinkUNet(3, 8, "MinkUNet99")
    with pytest.raises(ValueError, match="8 levels"):
        MinkUNetSpec(planes=(1, 2), blocks=(1, 1))
    net = MinkUNet(3, 2, TINY)
    with pytest.raises(ValueError, match="expected 3 input channels; got 1"):
        net(SparseTensor(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 1)))
