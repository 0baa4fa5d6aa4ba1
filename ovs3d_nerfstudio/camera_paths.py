"""Camera paths for forward-facing scenes, written as ``camera_path.json`` for ``ns-render camera-path``.

A forward-facing capture (the 3D-OVS dataset, LLFF) sees its scene from a small patch of
positions; a radiance field is only reconstructed where those cameras looked. nerfstudio's
``ns-render spiral`` circles one camera with a fixed radius and swings far outside that
patch, so much of the video shows unreconstructed space. The two paths here stay inside it:

* **spiral** (the LLFF render path the official 3D-OVS code renders): around the *mean*
  training pose, with per-axis radii equal to the 90th percentile of the camera centres'
  offsets from their mean (in the mean pose's frame), every camera looking at the point at
  the scene's *focus depth* in front of the mean camera. The focus depth blends the nearest
  and farthest scene depths of the LLFF bounds in disparity. Positions are then kept inside
  the bounding box of the training camera centres (the percentile radii can leave it when
  the cameras are not symmetric about their mean).
* **interpolate**: through the training poses in view order, positions linearly and
  orientations by spherical interpolation, so every frame is between two real cameras.

``ovs3d-camera-path --load-config RUN/config.yml`` writes the file; ``ovs3d-demo`` renders
its label video along the spiral.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple

import numpy as np
from jaxtyping import Float
from scipy.spatial.transform import Rotation, Slerp
from torch import Tensor

from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.process import run_command

PathKind = Literal["spiral", "interpolate"]

FOCUS_DISPARITY_BLEND = 0.75
"""Weight of the far depth when blending near and far disparities into the focus depth (LLFF's)."""
NEAR_MARGIN = 0.9
"""The nearest scene depth is taken as this times the smallest near bound (LLFF's)."""
FAR_MARGIN = 5.0
"""The farthest scene depth is taken as this times the largest far bound (LLFF's)."""
RADIUS_PERCENTILE = 90.0
"""Spiral radii: this percentile of the camera centres' absolute offsets from their mean (LLFF's)."""


def normalize(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def mean_pose(camera_to_worlds: Float[np.ndarray, "N 3 4"]) -> Float[np.ndarray, "3 4"]:
    """The mean camera: centre at the mean centre, looking along the mean viewing direction,
    with the mean up vector made orthogonal to it. Columns: right, up, backwards, centre
    (OpenGL / nerfstudio convention: the camera looks along -z)."""
    backwards = normalize(camera_to_worlds[:, :, 2].mean(axis=0))
    right = normalize(np.cross(camera_to_worlds[:, :, 1].mean(axis=0), backwards))
    up = np.cross(backwards, right)
    return np.stack([right, up, backwards, camera_to_worlds[:, :, 3].mean(axis=0)], axis=1)


def focus_depth(near_far: Float[np.ndarray, "N 2"]) -> float:
    """Depth in front of the mean camera that the spiral looks at: the near and far scene depths
    (LLFF bounds, widened by :data:`NEAR_MARGIN` and :data:`FAR_MARGIN`) blended in disparity."""
    near, far = NEAR_MARGIN * float(np.min(near_far[:, 0])), FAR_MARGIN * float(np.max(near_far[:, 1]))
    if not 0.0 < near < far:
        raise UserFacingError(
            f"the scene's depth bounds give near {near:g} and far {far:g}; pass --focus-depth DEPTH (in the "
            "trained run's units) to choose the depth the spiral looks at."
        )
    return 1.0 / ((1.0 - FOCUS_DISPARITY_BLEND) / near + FOCUS_DISPARITY_BLEND / far)


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> Float[np.ndarray, "3 4"]:
    """Camera-to-world matrix of a camera at ``position`` looking at ``target`` (OpenGL convention)."""
    backwards = normalize(position - target)
    right = normalize(np.cross(up, backwards))
    return np.stack([right, np.cross(backwards, right), backwards, position], axis=1)


def spiral_poses(
    camera_to_worlds: Float[np.ndarray, "N 3 4"],
    focus: float,
    frames: int,
    rotations: float = 2.0,
    z_rate: float = 0.5,
) -> Float[np.ndarray, "F 3 4"]:
    """The LLFF spiral (module docstring): ``rotations`` turns in ``frames`` frames; the depth
    offset turns ``z_rate`` times as fast as the circle."""
    centre_pose = mean_pose(camera_to_worlds)
    rotation, centre = centre_pose[:, :3], centre_pose[:, 3]
    centres = camera_to_worlds[:, :, 3]
    offsets = (centres - centre) @ rotation  # in the mean pose's frame
    radii = np.percentile(np.abs(offsets), RADIUS_PERCENTILE, axis=0)
    target = centre - focus * rotation[:, 2]
    lower, upper = centres.min(axis=0), centres.max(axis=0)
    poses = []
    for angle in np.linspace(0.0, 2.0 * math.pi * rotations, frames, endpoint=False):
        local = radii * np.array([math.cos(angle), math.sin(angle), math.sin(angle * z_rate)])
        position = np.clip(centre + rotation @ local, lower, upper)
        poses.append(look_at(position, target, rotation[:, 1]))
    return np.stack(poses)


def interpolation_poses(camera_to_worlds: Float[np.ndarray, "N 3 4"], frames: int) -> Float[np.ndarray, "F 3 4"]:
    """``frames`` poses evenly spaced along the training poses in order: positions linear,
    orientations spherically interpolated between consecutive cameras."""
    count = len(camera_to_worlds)
    if count < 2:
        raise UserFacingError("an interpolation needs at least two training cameras; use --kind spiral.")
    times = np.linspace(0.0, count - 1, frames)
    rotations = Slerp(np.arange(count), Rotation.from_matrix(camera_to_worlds[:, :, :3]))(times).as_matrix()
    positions = np.stack([np.interp(times, np.arange(count), camera_to_worlds[:, axis, 3]) for axis in range(3)], axis=1)
    return np.concatenate([rotations, positions[:, :, None]], axis=2)


def vertical_fov_degrees(fy: float, height: float) -> float:
    """The vertical field of view nerfstudio's camera paths store (``fov``), from a pinhole focal length."""
    return math.degrees(2.0 * math.atan(height / (2.0 * fy)))


def camera_path_dict(
    poses: Float[np.ndarray, "F 3 4"], fov_degrees: float, width: int, height: int, seconds: float
) -> Dict[str, Any]:
    """The ``camera_path.json`` content that ``ns-render camera-path`` reads (``get_path_from_json``)."""
    bottom = np.array([[0.0, 0.0, 0.0, 1.0]])
    return {
        "camera_type": "perspective",
        "render_width": int(width),
        "render_height": int(height),
        "seconds": float(seconds),
        "camera_path": [
            {
                "camera_to_world": np.concatenate([pose, bottom]).reshape(-1).tolist(),
                "fov": float(fov_degrees),
                "aspect": width / height,
            }
            for pose in poses
        ],
    }


def forward_facing_path(
    camera_to_worlds: Float[Tensor, "N 3 4"],
    fy: float,
    image_size: Tuple[float, float],
    near_far: Optional[Float[Tensor, "N 2"]],
    kind: PathKind = "spiral",
    frames: int = 120,
    seconds: float = 8.0,
    render_scale: float = 1.0,
    rotations: float = 2.0,
    focus: Optional[float] = None,
) -> Dict[str, Any]:
    """A camera path over the training cameras (their poses, focal length ``fy`` and ``image_size``
    (width, height) in pixels), rendered at ``render_scale`` x that size."""
    if frames < 1 or seconds <= 0 or render_scale <= 0:
        raise UserFacingError(
            f"--frames {frames}, --seconds {seconds:g}, --render-scale {render_scale:g}: frames must be >= 1, "
            "seconds and render-scale > 0."
        )
    poses = camera_to_worlds.detach().cpu().double().numpy()
    if kind == "spiral":
        if focus is None:
            if near_far is None:
                raise UserFacingError(
                    "this scene has no depth bounds (only the LLFF layout's poses_bounds.npy has them): pass "
                    "--focus-depth DEPTH, the distance in front of the cameras to look at, in the run's units."
                )
            focus = focus_depth(near_far.detach().cpu().double().numpy())
        path = spiral_poses(poses, focus, frames, rotations)
    else:
        path = interpolation_poses(poses, frames)
    width, height = (max(1, round(size * render_scale)) for size in image_size)
    return camera_path_dict(path, vertical_fov_degrees(fy, image_size[1]), width, height, seconds)


def write_camera_path(content: Dict[str, Any], output: Path) -> Path:
    """Writes a camera path file, never over an existing file."""
    output = Path(output)
    if output.exists():
        raise UserFacingError(f"{output} already exists; choose another --output (nothing was overwritten).")
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "x", encoding="utf-8") as file:
        json.dump(content, file, indent=2)
    return output


@dataclass
class WriteCameraPath:
    """Write a forward-facing camera path (LLFF spiral or an interpolation through the training
    cameras) of a trained ovs3d run, for ``ns-render camera-path``."""

    load_config: Path
    """Path to the run's config.yml."""
    kind: PathKind = "spiral"
    """spiral: LLFF spiral around the mean training pose at the focus depth; interpolate: through the training poses."""
    output: Optional[Path] = None
    """File to write (default: camera_paths/<kind>.json beside config.yml); an existing file is never overwritten."""
    frames: int = 120
    """Frames of the path (the official render path: 120)."""
    seconds: float = 8.0
    """Length of the video ns-render makes from it."""
    rotations: float = 2.0
    """Turns of the spiral (the official render path: 2)."""
    render_scale: float = 1.0
    """Rendered size relative to the views the run serves (ovs3d-data --downscale-factor applies)."""
    focus_depth: Optional[float] = None
    """Depth the spiral looks at, in the run's units (default: from the LLFF depth bounds)."""

    def main(self) -> Path:
        from nerfstudio.utils.rich_utils import CONSOLE

        from ovs3d_nerfstudio.runs import load_ovs3d_config

        config = load_ovs3d_config(self.load_config)
        dataparser = config.pipeline.datamanager.dataparser
        outputs = dataparser.setup().get_dataparser_outputs(split="train")
        cameras = outputs.cameras
        # Views are served at 1/downscale_factor; the path renders at that size by default.
        served = 1.0 / float(getattr(dataparser, "downscale_factor", 1.0))
        content = forward_facing_path(
            cameras.camera_to_worlds,
            float(cameras.fy[0]) * served,
            (float(cameras.width[0]) * served, float(cameras.height[0]) * served),
            outputs.metadata.get("near_far"),
            self.kind,
            self.frames,
            self.seconds,
            self.render_scale,
            self.rotations,
            self.focus_depth,
        )
        output = self.output or Path(self.load_config).parent / "camera_paths" / f"{self.kind}.json"
        write_camera_path(content, output)
        CONSOLE.print(
            f"[bold green]:white_check_mark: {self.kind} camera path of {self.frames} frames "
            f"({content['render_width']}x{content['render_height']}) written to {output}\n"
            f"Render it: ns-render camera-path --load-config {self.load_config} --camera-path-filename {output} "
            f"--rendered-output-names rgb labels --output-path renders/{self.kind}.mp4"
        )
        return output


def entrypoint() -> None:
    """Entry point of ``ovs3d-camera-path``."""
    run_command(WriteCameraPath)


if __name__ == "__main__":
    entrypoint()
