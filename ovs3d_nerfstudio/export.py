"""Labelled point cloud of a trained run: surface points with their label, as a binary PLY.

An ``ovs3d-splat`` run exports its Gaussians instead: ``point_cloud.ply`` holds the means of the
Gaussians above the opacity threshold with their labels (same records as below), and
``splat_labels.ply`` / ``splat_rgb.ply`` hold every Gaussian in the 3D Gaussian Splatting layout
that splat viewers open (``f_dc_*`` the label's palette colour or the trained colour), each with
its ``label``.

Rays are drawn at random from the training cameras and rendered through the model; where
the field is opaque along a ray (accumulation above a threshold) the point at the rendered
depth is kept with the argmax label of ``class_probabilities``. The PLY carries the label
id and the label's palette colour as its ``red green blue``, so any point cloud viewer
shows the segmentation; ``labels.txt`` and ``legend.png`` beside it name the ids.

    ovs3d-export --load-config RUN/config.yml --output-dir exports/scene
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.legend_image import colours_to_uint8, write_legend
from ovs3d_nerfstudio.model import Ovs3dModel
from ovs3d_nerfstudio.process import run_command
from ovs3d_nerfstudio.runs import load_ovs3d_run
from ovs3d_nerfstudio.splat.model import Ovs3dSplatModel

POINT_DTYPE = np.dtype(
    [
        ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
        ("red", "u1"), ("green", "u1"), ("blue", "u1"),
        ("label", "<i4"),
        ("rendered_red", "u1"), ("rendered_green", "u1"), ("rendered_blue", "u1"),
    ]
)  # fmt: skip
"""One exported point: position, palette colour of its label, label id, and the rendered RGB."""

_PLY_TYPES = {
    "f4": "float", "f8": "double", "i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint"
}  # fmt: skip
"""PLY scalar type of each numpy ``kind + itemsize``."""


def write_ply(path: Path, vertices: np.ndarray, comments: Sequence[str] = ()) -> Path:
    """Writes a structured array as the ``vertex`` element of a binary little-endian PLY.

    Hand-written (an ASCII header, then the packed records) so that exporting needs no
    mesh library; ``comments`` must be ASCII, as PLY headers are.
    """
    if vertices.dtype.names is None:
        raise ValueError("write_ply needs a structured array (one named field per PLY property)")
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {comment}" for comment in comments)]
    header.append(f"element vertex {len(vertices)}")
    little_endian = []
    for name in vertices.dtype.names:
        scalar = vertices.dtype[name]
        header.append(f"property {_PLY_TYPES[f'{scalar.kind}{scalar.itemsize}']} {name}")
        little_endian.append((name, scalar.newbyteorder("<")))
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.write(("\n".join(header) + "\n").encode("ascii"))
        file.write(np.ascontiguousarray(vertices.astype(little_endian)).tobytes())
    return path


def read_ply(path: Path) -> np.ndarray:
    """Reads the ``vertex`` element of a binary little-endian PLY, as :func:`write_ply` writes it."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file")
    fields: List[tuple] = []
    count: Optional[int] = None
    type_codes = {ply: f"<{code}" for code, ply in _PLY_TYPES.items()}
    for line in data[:end].decode("ascii").splitlines()[1:]:
        words = line.split()
        if words[:1] == ["format"] and words[1] != "binary_little_endian":
            raise ValueError(f"{path}: only binary_little_endian PLY is supported, not {words[1]}")
        if words[:1] == ["element"]:
            if words[1] != "vertex" or count is not None:
                raise ValueError(f"{path}: only a single 'vertex' element is supported")
            count = int(words[2])
        if words[:1] == ["property"]:
            if words[1] not in type_codes:
                raise ValueError(f"{path}: unsupported property type {words[1]!r}")
            fields.append((words[2], type_codes[words[1]]))
    if count is None:
        raise ValueError(f"{path} has no vertex element")
    return np.frombuffer(data, dtype=np.dtype(fields), count=count, offset=end + len(b"end_header\n"))


@torch.no_grad()
def sample_labelled_points(
    model: Ovs3dModel,
    cameras: Cameras,
    num_points: int,
    opacity_threshold: float,
    max_num_rays: int,
    generator: torch.Generator,
) -> Dict[str, Tensor]:
    """Renders random training rays until ``num_points`` opaque ones are found (or ``max_num_rays`` are spent).

    Returns ``positions`` [N, 3] (model frame), ``label_ids`` [N] and ``rgb`` [N, 3] in [0, 1],
    N <= ``num_points``. Pixel positions are continuous, not pixel centres, so dense exports
    do not stack points on the pixel grid of each camera.
    """
    cameras = cameras.to(model.device)
    chunk = model.config.eval_num_rays_per_chunk
    found: Dict[str, List[Tensor]] = {"positions": [], "label_ids": [], "rgb": []}
    num_found = num_tried = 0
    columns = (TextColumn(":cloud: Labelled points"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=CONSOLE) as progress:
        task = progress.add_task("points", total=num_points)
        while num_found < num_points and num_tried < max_num_rays:
            count = min(chunk, max_num_rays - num_tried)
            camera_ids = torch.randint(len(cameras), (count,), generator=generator).to(model.device)
            sizes = torch.cat([cameras.height[camera_ids], cameras.width[camera_ids]], dim=-1).float()
            coords = torch.rand(count, 2, generator=generator).to(model.device) * sizes
            rays = cameras.generate_rays(camera_indices=camera_ids[:, None], coords=coords)
            outputs = model(rays)
            opaque = outputs["accumulation"][:, 0] > opacity_threshold
            depth = outputs["depth"][opaque]
            found["positions"].append((rays.origins[opaque] + rays.directions[opaque] * depth).cpu())
            found["label_ids"].append(outputs["class_probabilities"][opaque].argmax(dim=-1).cpu())
            found["rgb"].append(outputs["rgb"][opaque].cpu())
            num_tried += count
            num_found += int(opaque.sum())
            progress.update(task, completed=min(num_found, num_points))
    return {key: torch.cat(values)[:num_points] for key, values in found.items()}


def opaque_gaussians(
    model: Ovs3dSplatModel, opacity_threshold: float, count: int, seed: int, flag: str = "--opacity-threshold"
) -> Tensor:
    """Indices of up to ``count`` random Gaussians whose own opacity exceeds the threshold (the
    splat model's surface points); none is a one-line error that names the command's ``flag``."""
    opaque = torch.sigmoid(model.gauss_params["opacities"].detach().float().cpu()[:, 0]) > opacity_threshold
    chosen = torch.nonzero(opaque)[:, 0]
    chosen = chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(seed))[:count]]
    if len(chosen) == 0:
        raise UserFacingError(f"no Gaussian has opacity above {opacity_threshold}: lower {flag}")
    return chosen


SH_C0 = 0.28209479177387814
"""The degree-0 spherical harmonic: splat viewers show the colour ``0.5 + SH_C0 * f_dc``."""


def splat_records(model: Ovs3dSplatModel, colours: Float[Tensor, "N 3"], label_ids: Int[Tensor, " N"]) -> np.ndarray:
    """Every Gaussian in the 3D Gaussian Splatting PLY layout (raw log-scales, opacity logits,
    rotation quaternions, ``f_dc_*`` showing ``colours``) plus its ``label``."""
    params = {name: value.detach().float().cpu() for name, value in model.gauss_params.items()}
    columns = {
        **{axis: params["means"][:, i] for i, axis in enumerate("xyz")},
        **{name: torch.zeros(len(label_ids)) for name in ("nx", "ny", "nz")},
        **{f"f_dc_{i}": (colours[:, i] - 0.5) / SH_C0 for i in range(3)},
        "opacity": params["opacities"][:, 0],
        **{f"scale_{i}": params["scales"][:, i] for i in range(3)},
        **{f"rot_{i}": params["quats"][:, i] for i in range(4)},
    }
    records = np.empty(len(label_ids), dtype=[*((name, "<f4") for name in columns), ("label", "<i4")])
    for name, values in columns.items():
        records[name] = values.numpy()
    records["label"] = label_ids.numpy()
    return records


def world_positions(positions: Float[Tensor, "N 3"], dataparser_outputs: DataparserOutputs) -> Float[Tensor, "N 3"]:
    """Model-frame positions in the dataset's original frame (the dataparser's transform undone)."""
    poses = torch.eye(4)[:3].repeat(len(positions), 1, 1)
    poses[:, :, 3] = positions
    return dataparser_outputs.transform_poses_to_original_space(poses)[:, :, 3]


def point_records(
    positions: Float[Tensor, "N 3"],
    label_ids: Int[Tensor, " N"],
    rgb: Float[Tensor, "N 3"],
    colours: Float[Tensor, "C 3"],
) -> np.ndarray:
    """Packs points into :data:`POINT_DTYPE` records; ``red green blue`` is the label's palette colour."""
    records = np.empty(len(positions), dtype=POINT_DTYPE)
    xyz = positions.float().numpy()
    ids = label_ids.numpy()
    palette_bytes = colours_to_uint8(colours)[ids]
    rendered_bytes = colours_to_uint8(rgb)
    for axis, name in enumerate("xyz"):
        records[name] = xyz[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        records[name] = palette_bytes[:, channel]
        records[f"rendered_{name}"] = rendered_bytes[:, channel]
    records["label"] = ids
    return records


@dataclass
class ExportLabelledPointCloud:
    """Export a trained ovs3d run as a labelled point cloud (PLY + labels.txt + legend.png)."""

    load_config: Path
    """Path to the run's config.yml."""
    output_dir: Path
    """Folder for point_cloud.ply, labels.txt and legend.png."""
    num_points: int = 1_000_000
    """Number of points to export."""
    opacity_threshold: float = 0.5
    """Keep a ray's point only when the rendered accumulation (opacity) exceeds this, i.e. on surfaces
    (ovs3d-splat: keep the Gaussians whose own opacity exceeds this)."""
    max_num_rays: Optional[int] = None
    """Stop after rendering this many rays even with fewer points (default: 4 x num-points)."""
    save_world_frame: bool = False
    """Write positions in the dataset's original frame instead of the model's normalised one."""
    seed: int = 0
    """Seed of the ray sampling, so exports are repeatable."""

    def main(self) -> None:
        if self.num_points <= 0:
            raise UserFacingError(f"--num-points must be positive, got {self.num_points}")
        if not 0.0 <= self.opacity_threshold < 1.0:
            raise UserFacingError(f"--opacity-threshold must be in [0, 1), got {self.opacity_threshold}")
        max_num_rays = self.max_num_rays if self.max_num_rays is not None else 4 * self.num_points
        if max_num_rays <= 0:
            raise UserFacingError(f"--max-num-rays must be positive, got {max_num_rays}")
        pipeline = load_ovs3d_run(self.load_config)
        if isinstance(pipeline.model, Ovs3dSplatModel):
            self.export_gaussians(pipeline.model, pipeline.datamanager.train_dataparser_outputs)
            return
        model: Ovs3dModel = pipeline.model
        dataparser_outputs = pipeline.datamanager.train_dataparser_outputs
        generator = torch.Generator().manual_seed(self.seed)
        points = sample_labelled_points(
            model, dataparser_outputs.cameras, self.num_points, self.opacity_threshold, max_num_rays, generator
        )
        if len(points["positions"]) == 0:
            raise UserFacingError(
                f"none of {max_num_rays} rays reached opacity {self.opacity_threshold}: "
                "lower --opacity-threshold or check that the run is trained"
            )
        if len(points["positions"]) < self.num_points:
            CONSOLE.print(
                f"[yellow]Only {len(points['positions'])} of {max_num_rays} rays reached opacity "
                f"{self.opacity_threshold}; exporting those (raise --max-num-rays for more)."
            )
        positions = points["positions"]
        if self.save_world_frame:
            positions = world_positions(positions, dataparser_outputs)

        # class_probabilities score the display labels (the trained ones unless edited in a viewer).
        self.write_points(positions, points["label_ids"], points["rgb"], model.display_labels, model.display_colours.cpu())

    @torch.no_grad()
    def export_gaussians(self, model: Ovs3dSplatModel, dataparser_outputs: DataparserOutputs) -> None:
        """The Gaussians as splat PLYs, and those above the opacity threshold as labelled points."""
        label_ids = model.gaussian_labels().cpu()
        colours = model.display_colours.cpu()
        rgb = torch.sigmoid(model.gauss_params["features_dc"].detach().float().cpu())
        comment = "ovs3d-splat Gaussians: label i is line i of labels.txt"
        for name, shown in (("splat_labels.ply", colours[label_ids]), ("splat_rgb.ply", rgb)):
            write_ply(self.output_dir / name, splat_records(model, shown, label_ids), comments=[comment])
        chosen = opaque_gaussians(model, self.opacity_threshold, self.num_points, self.seed)
        positions = model.gauss_params["means"].detach().float().cpu()[chosen]
        if self.save_world_frame:
            positions = world_positions(positions, dataparser_outputs)
        self.write_points(positions, label_ids[chosen], rgb[chosen], model.display_labels, colours)

    def write_points(self, positions: Tensor, label_ids: Tensor, rgb: Tensor, labels: List[str], colours: Tensor) -> None:
        """``point_cloud.ply``, ``labels.txt`` and ``legend.png``."""
        records = point_records(positions, label_ids, rgb, colours)
        ply = write_ply(
            self.output_dir / "point_cloud.ply",
            records,
            comments=["ovs3d labelled point cloud: label i is line i of labels.txt, red/green/blue its palette colour"],
        )
        labels_path = self.output_dir / "labels.txt"
        labels_path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        legend = write_legend(labels, colours, self.output_dir / "legend.png")
        CONSOLE.print(f"[bold green]:white_check_mark: {len(records)} labelled points written to {ply}")
        CONSOLE.print(f"Label names: {labels_path}; legend: {legend}")


def entrypoint() -> None:
    """Entry point of ``ovs3d-export``."""
    run_command(ExportLabelledPointCloud)


if __name__ == "__main__":
    entrypoint()
