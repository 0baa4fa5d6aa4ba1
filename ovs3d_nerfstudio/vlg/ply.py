"""Reading and writing ``.ply`` point clouds: ASCII and binary, positions with optional colour
and label.

A user's ``.ply`` is one of the point sources of the point-cloud path, and the labelled
``.ply`` is one of its outputs. Only the ``vertex`` element is read; elements before it
(rare) are skipped when their size is known. Anything that cannot be read raises
:class:`PlyError`, whose message is one line naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import UserFacingError

SCALAR_TYPES: Dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
"""PLY scalar type names (both spellings) to numpy type codes without byte order."""

FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
COLOUR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
LABEL_NAMES = ("label", "class", "semantic")
MAX_HEADER_LINES = 1000


class PlyError(UserFacingError):
    """A ``.ply`` that cannot be read; the message names the file and the reason."""


@dataclass
class PointCloud:
    """Positions ``(N, 3)`` float64; colours ``(N, 3)`` float32 in [0, 1]; labels ``(N,)`` int64."""

    xyz: np.ndarray
    colours: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


@dataclass
class _Element:
    name: str
    count: int
    properties: List[Tuple[str, str]]  # (name, numpy type code); list properties are "list"


def _fail(path: Path, reason: str) -> PlyError:
    return PlyError(f"cannot read point cloud {path}: {reason}")


def _read_header(stream: BinaryIO, path: Path) -> Tuple[str, List[_Element]]:
    if stream.readline().strip() != b"ply":
        raise _fail(path, "not a .ply file (it does not start with 'ply')")
    file_format: Optional[str] = None
    elements: List[_Element] = []
    for _ in range(MAX_HEADER_LINES):
        raw = stream.readline()
        if not raw:
            raise _fail(path, "the header has no 'end_header' line")
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format" and len(words) >= 2:
            if words[1] not in FORMATS:
                raise _fail(path, f"unsupported format {words[1]!r} (ascii, binary_little_endian, binary_big_endian)")
            file_format = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in SCALAR_TYPES:
            elements[-1].properties.append((words[2], SCALAR_TYPES[words[1]]))
        elif words[0] == "property" and elements and len(words) == 5 and words[1] == "list":
            elements[-1].properties.append((words[4], "list"))
        else:
            raise _fail(path, f"unreadable header line {raw.decode('ascii', errors='replace').strip()!r}")
    else:
        raise _fail(path, f"no 'end_header' in the first {MAX_HEADER_LINES} header lines")
    if file_format is None:
        raise _fail(path, "the header has no 'format' line")
    return file_format, elements


def _skip_element(stream: BinaryIO, element: _Element, file_format: str, path: Path) -> None:
    if file_format == "ascii":
        for _ in range(element.count):
            stream.readline()
        return
    if any(kind == "list" for _, kind in element.properties):
        raise _fail(path, f"element {element.name!r} before the vertices has list properties (unsupported)")
    row_bytes = sum(np.dtype(kind).itemsize for _, kind in element.properties)
    stream.seek(element.count * row_bytes, 1)


def _read_vertices(stream: BinaryIO, vertex: _Element, file_format: str, path: Path) -> np.ndarray:
    if any(kind == "list" for _, kind in vertex.properties):
        raise _fail(path, "the vertex element has list properties (unsupported)")
    names = [name for name, _ in vertex.properties]
    if len(set(names)) != len(names):
        raise _fail(path, f"repeated vertex property names {names}")
    byte_order = FORMATS[file_format] or "<"
    dtype = np.dtype([(name, byte_order + kind) for name, kind in vertex.properties])
    if file_format != "ascii":
        data = stream.read(vertex.count * dtype.itemsize)
        if len(data) < vertex.count * dtype.itemsize:
            raise _fail(path, f"truncated: {vertex.count} vertices announced, {len(data) // dtype.itemsize} present")
        return np.frombuffer(data, dtype=dtype, count=vertex.count)
    rows = np.zeros(vertex.count, dtype=dtype)
    for index in range(vertex.count):
        words = stream.readline().split()
        if not words:
            raise _fail(path, f"truncated: {vertex.count} vertices announced, {index} present")
        if len(words) < len(names):
            raise _fail(path, f"vertex {index} has {len(words)} values, the header names {len(names)}")
        try:
            rows[index] = tuple(
                float(word) if dtype[name].kind == "f" else int(word) for name, word in zip(names, words)
            )
        except ValueError:
            line = b" ".join(words).decode(errors="replace")
            raise _fail(path, f"vertex {index} has a value that is not a number: {line!r}") from None
    return rows


def read_ply(path) -> PointCloud:
    """Positions (``x, y, z``), colours (``red, green, blue``, or ``r, g, b``) and labels
    (``label``, ``class`` or ``semantic``) of a ``.ply``'s vertices."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        with path.open("rb") as stream:
            file_format, elements = _read_header(stream, path)
            vertex = None
            for element in elements:
                if element.name == "vertex":
                    vertex = element
                    break
                _skip_element(stream, element, file_format, path)
            if vertex is None:
                raise _fail(path, "no 'vertex' element")
            rows = _read_vertices(stream, vertex, file_format, path)
    except OSError as error:
        raise _fail(path, error.strerror or str(error)) from None
    names = set(rows.dtype.names or ())
    missing = [axis for axis in "xyz" if axis not in names]
    if missing:
        present = ", ".join(rows.dtype.names or ())
        raise _fail(path, f"the vertices have no {', '.join(missing)} (properties: {present})")
    xyz = np.stack([rows[axis].astype(np.float64) for axis in "xyz"], axis=1)
    if not np.isfinite(xyz).all():
        raise _fail(path, "some positions are not finite")
    colours = None
    for triple in COLOUR_NAMES:
        if all(name in names for name in triple):
            colours = np.stack([_unit_colour(rows[name]) for name in triple], axis=1).astype(np.float32)
            break
    labels = next((rows[name].astype(np.int64) for name in LABEL_NAMES if name in names), None)
    return PointCloud(xyz=xyz, colours=colours, labels=labels)


def _unit_colour(channel: np.ndarray) -> np.ndarray:
    """Integer colours are 0-255 (or 0-65535 for 16 bits); float colours are already 0-1."""
    if channel.dtype.kind == "f":
        return channel.astype(np.float64)
    return channel.astype(np.float64) / (65535.0 if channel.dtype.itemsize == 2 else 255.0)


def write_ply(
    path,
    xyz: np.ndarray,
    colours: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    extra: Optional[Mapping[str, np.ndarray]] = None,
    binary: bool = True,
) -> None:
    """A ``.ply`` of vertices: float32 positions, uchar colours (from [0, 1]), int32 labels and
    any ``extra`` per-point scalars under their own names (their dtype kept)."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3); got {xyz.shape}")
    columns: List[Tuple[str, np.ndarray]] = [(axis, xyz[:, i].astype(np.float32)) for i, axis in enumerate("xyz")]
    if colours is not None:
        rgb = np.clip(np.round(np.asarray(colours, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        columns += [(name, rgb[:, i]) for i, name in enumerate(COLOUR_NAMES[0])]
    if labels is not None:
        columns.append(("label", np.asarray(labels).astype(np.int32)))
    for name, values in (extra or {}).items():
        columns.append((name, np.asarray(values)))
    type_names = {code: name for name, code in reversed(list(SCALAR_TYPES.items()))}
    for name, values in columns:
        if values.shape != (len(xyz),):
            raise ValueError(f"property {name!r} must have one value per point; got shape {values.shape}")
        if values.dtype.str[1:] not in type_names:
            raise ValueError(f"property {name!r} has a type a .ply cannot hold: {values.dtype}")
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {len(xyz)}"]
    header += [f"property {type_names[values.dtype.str[1:]]} {name}" for name, values in columns]
    header.append("end_header")
    table = np.zeros(len(xyz), dtype=[(name, "<" + values.dtype.str[1:]) for name, values in columns])
    for name, values in columns:
        table[name] = values
    with Path(path).open("wb") as stream:
        stream.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            stream.write(table.tobytes())
        else:
            for row in table:
                stream.write((" ".join(_ascii_value(value) for value in row) + "\n").encode("ascii"))


def _ascii_value(value) -> str:
    return repr(float(value)) if isinstance(value, np.floating) else str(int(value))
