"""Point clouds in: the ``.ply`` reader (ASCII and binary files written byte by byte here, and the
writer's files), its one-line errors, and voxelisation there and back."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.vlg.ply import PlyError, read_ply, write_ply
from ovs3d_nerfstudio.vlg.voxels import (
    AUTOMATIC_DIVISIONS,
    automatic_voxel_size,
    batch_coordinates,
    resolve_voxel_size,
    voxelize,
)

ASCII_PLY = b"""ply
format ascii 1.0
comment written by hand
element vertex 3
property float x
property float y
property float z
property uchar red
property uchar green
property uchar blue
property int label
element face 1
property list uchar int vertex_indices
end_header
0.5 -1 2 255 0 51 3
1e-1 0 0 0 255 0 0
-2.25 4 8 10 20 30 7
3 0 1 2
"""


def binary_ply(endian: str = "<", count: int = 2, rows=((1.5, -2.0, 0.25, 7), (0.0, 1.0, -3.0, 2))) -> bytes:
    name = {"<": "binary_little_endian", ">": "binary_big_endian"}[endian]
    header = (
        f"ply\nformat {name} 1.0\nelement camera 1\nproperty float fx\nproperty float fy\n"
        f"element vertex {count}\nproperty double x\nproperty double y\nproperty double z\n"
        "property ushort class\nend_header\n"
    ).encode()
    camera = struct.pack(endian + "ff", 500.0, 500.0)  # an element before the vertices, skipped
    body = b"".join(struct.pack(endian + "dddH", *row) for row in rows)
    return header + camera + body


def test_ascii_positions_colours_and_labels(tmp_path):
    path = tmp_path / "cloud.ply"
    path.write_bytes(ASCII_PLY)
    cloud = read_ply(path)
    np.testing.assert_allclose(cloud.xyz, [[0.5, -1, 2], [0.1, 0, 0], [-2.25, 4, 8]], rtol=1e-6)
    assert cloud.xyz.dtype == np.float64 and len(cloud) == 3
    np.testing.assert_allclose(cloud.colours, [[1, 0, 0.2], [0, 1, 0], [10 / 255, 20 / 255, 30 / 255]], rtol=1e-6)
    assert cloud.labels.tolist() == [3, 0, 7]


@pytest.mark.parametrize("endian", ["<", ">"])
def test_binary_positions_and_labels_after_a_skipped_element(tmp_path, endian):
    path = tmp_path / "cloud.ply"
    path.write_bytes(binary_ply(endian))
    cloud = read_ply(path)
    np.testing.assert_array_equal(cloud.xyz, [[1.5, -2.0, 0.25], [0.0, 1.0, -3.0]])
    assert cloud.colours is None and cloud.labels.tolist() == [7, 2]


@pytest.mark.parametrize("binary", [True, False])
def test_what_the_writer_writes_the_reader_reads(tmp_path, binary):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(20, 3)).astype(np.float32)
    colours = rng.integers(0, 256, size=(20, 3)) / 255.0
    labels = rng.integers(0, 5, size=20)
    path = tmp_path / "out.ply"
    write_ply(path, xyz, colours, labels, extra={"confidence": rng.random(20).astype(np.float32)}, binary=binary)
    cloud = read_ply(path)
    np.testing.assert_array_equal(cloud.xyz, xyz.astype(np.float64))
    np.testing.assert_allclose(cloud.colours, colours, atol=1e-6)
    assert cloud.labels.tolist() == labels.tolist()
    assert b"property float confidence" in path.read_bytes()[:400]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "not a .ply file"),
        (b"solid mesh\n", "not a .ply file"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", "no 'end_header' line"),
        (b"ply\nformat binary_middle_endian 1.0\nend_header\n", "unsupported format 'binary_middle_endian'"),
        (b"ply\nelement vertex 1\nproperty float x\nend_header\n1\n", "no 'format' line"),
        (
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n",
            "unreadable header line 'property quad x'",
        ),
        (b"ply\nformat ascii 1.0\nelement face 0\nend_header\n", "no 'vertex' element"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nend_header\n1 2\n", "no z"),
        (ASCII_PLY.replace(b"-2.25 4 8 10 20 30 7\n3 0 1 2\n", b""), "truncated: 3 vertices announced, 2 present"),
        (ASCII_PLY.replace(b"0.5 -1 2", b"0.5 oops 2"), "vertex 0 has a value that is not a number"),
        (ASCII_PLY.replace(b"255 0 51 3", b"255"), "vertex 0 has 4 values, the header names 7"),
        (binary_ply(count=3), "truncated: 3 vertices announced, 2 present"),
        (ASCII_PLY.replace(b"0.5 -1 2", b"nan -1 2"), "some positions are not finite"),
    ],
)
def test_unreadable_files_raise_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PlyError) as raised:
        read_ply(path)
    text = str(raised.value)
    assert isinstance(raised.value, UserFacingError)
    assert text.startswith(f"cannot read point cloud {path}: ") and message in text and "\n" not in text


def test_the_writer_refuses_what_a_ply_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match=r"xyz must be \(N, 3\)"):
        write_ply(tmp_path / "a.ply", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one value per point"):
        write_ply(tmp_path / "a.ply", np.zeros((2, 3)), extra={"score": np.zeros(3)})
    with pytest.raises(ValueError, match="cannot hold: int64"):
        write_ply(tmp_path / "a.ply", np.zeros((2, 3)), extra={"big": np.zeros(2, dtype=np.int64)})


def test_voxelisation_groups_points_and_returns_to_them():
    xyz = np.array([[0.0, 0.0, 0.0], [0.05, 0.09, 0.01], [0.31, 0.0, 0.0], [-0.2, 0.0, 0.0]])
    vox = voxelize(xyz, 0.1, origin=[0.0, 0.0, 0.0])
    assert vox.coords.tolist() == [[-2, 0, 0], [0, 0, 0], [3, 0, 0]]  # sorted
    assert vox.point_to_voxel.tolist() == [1, 1, 2, 0] and vox.counts.tolist() == [1, 2, 1]
    colours = torch.tensor([[1.0, 0, 0], [0.0, 1, 0], [0, 0, 1], [1, 1, 1]])
    torch.testing.assert_close(vox.mean(colours)[1], torch.tensor([0.5, 0.5, 0.0]))
    assert vox.to_points(vox.mean(colours)).shape == (4, 3)
    labels = torch.tensor([4, 2, 1, 0])
    assert vox.majority(labels).tolist() == [0, 2, 1]  # a 4-2 tie goes to the smaller label
    assert vox.majority(torch.tensor([255, 3, 255, 1]), ignore=255).tolist() == [1, 3, 255]
    # Without an origin, the points' minimum is the origin: all coordinates are >= 0.
    assert voxelize(xyz, 0.1).coords.min() == 0


def test_voxel_sizes_automatic_per_scene_given_for_several():
    rng = np.random.default_rng(1)
    room = rng.uniform([0, 0, 0], [6.0, 4.0, 3.0], size=(5000, 3))
    room[0] = [1000.0, 0, 0]  # a stray point does not set the extent
    size = automatic_voxel_size(room)
    assert size == pytest.approx(6.0 * 0.98 / AUTOMATIC_DIVISIONS, rel=0.02)
    assert resolve_voxel_size([room], None) == size
    assert resolve_voxel_size([room, room], 0.02) == 0.02
    with pytest.raises(UserFacingError, match="automatic voxel size is per scene, and 2 scenes were given"):
        resolve_voxel_size([room, room], None)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserFacingError, match="voxel size must be a positive number"):
            resolve_voxel_size([room], bad)
    with pytest.raises(UserFacingError, match="empty"):
        automatic_voxel_size(np.zeros((0, 3)))
    with pytest.raises(UserFacingError, match="single position"):
        automatic_voxel_size(np.ones((4, 3)))


def test_scenes_batch_with_their_index_first():
    batch = batch_coordinates([torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6], [7, 8, 9]])])
    assert batch.tolist() == [[0, 1, 2, 3], [1, 4, 5, 6], [1, 7, 8, 9]]
    assert batch_coordinates([]).shape == (0, 4)
