"""Tiny procedural scenes with exact per-pixel labels, written in the 3D-OVS layout.

The real 3D-OVS scenes cannot be downloaded on every machine, and their masks cover only
five views. A scene ray-cast analytically from spheres, boxes and planes gives images,
poses and a label for *every* pixel of *every* view, with no randomness outside ``seed``.
The synthetic benchmark's scenes and the demo are built with it, and tests use it to check the
dataparser end to end (their tiny scene is ``tests/tiny_scene.py``); everything here is plain
numpy and free of test assumptions.

Conventions: world units are arbitrary; camera-to-world matrices are OpenGL / nerfstudio
([right, up, backwards] columns, the camera looks along -z); a pixel's ray passes
through its centre, as in nerfstudio's ``Cameras.generate_rays``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from jaxtyping import Bool, Float, Int, UInt8
from PIL import Image

TextureKind = Literal["none", "stripes", "checker", "noise"]
Vec3 = Tuple[float, float, float]

_EPS = 1e-6


@dataclass(kw_only=True)
class _Surface:
    """Appearance shared by every primitive."""

    label: str
    """Text label of the class; several primitives may share one."""
    albedo: Vec3
    """Base RGB colour in [0, 1]."""
    texture: TextureKind = "none"
    """Procedural pattern, a function of the 3D hit point so that it is multi-view consistent."""
    texture_frequency: float = 6.0
    """Pattern cells per world unit."""


@dataclass(kw_only=True)
class Sphere(_Surface):
    center: Vec3
    radius: float


@dataclass(kw_only=True)
class Box(_Surface):
    """Axis-aligned box between two corners."""

    lower: Vec3
    upper: Vec3


@dataclass(kw_only=True)
class Plane(_Surface):
    """Infinite axis-aligned plane ``x[axis] == offset`` (a wall: axis 2, a floor: axis 1)."""

    axis: int
    offset: float


Primitive = Union[Sphere, Box, Plane]


@dataclass
class CameraRig:
    """Forward-facing LLFF-like rig: cameras on an ellipse in a plane, all looking at ``target``."""

    num_views: int = 8
    target: Vec3 = (0.0, 0.0, 0.0)
    distance: float = 3.0
    """Distance of the camera plane from ``target`` along +z (the cameras look towards -z)."""
    spread: Tuple[float, float] = (0.4, 0.25)
    """Semi-axes of the ellipse of camera centres, in x and y."""
    focal: float = 80.0
    """Pinhole focal length in pixels (same in x and y; principal point at the image centre)."""


@dataclass
class SceneSpec:
    """Everything that determines a procedural scene; rendering it twice gives identical arrays."""

    objects: List[Union[Sphere, Box]]
    wall: Plane
    """Background plane behind the objects; it catches every ray of a forward-facing rig."""
    floor: Optional[Plane] = None
    rig: CameraRig = field(default_factory=CameraRig)
    width: int = 64
    height: int = 48
    light_direction: Vec3 = (0.3, 0.8, 0.6)
    """Direction *towards* a directional light (normalised when used)."""
    ambient: float = 0.35
    seed: int = 0
    """Seeds the noise texture (and, in the spec factories, the object layout)."""

    @property
    def surfaces(self) -> List[Primitive]:
        """Every primitive; objects first, background planes last (like 3D-OVS class lists)."""
        planes: List[Primitive] = [self.floor] if self.floor is not None else []
        return [*self.objects, *planes, self.wall]

    @property
    def labels(self) -> List[str]:
        """Distinct labels in order of first appearance in :attr:`surfaces`; label maps index this list."""
        return list(dict.fromkeys(surface.label for surface in self.surfaces))


class RenderedScene(NamedTuple):
    images: UInt8[np.ndarray, "N H W 3"]
    label_maps: Int[np.ndarray, "N H W"]
    """Index into ``SceneSpec.labels`` of the surface seen by each pixel; -1 where a ray hits nothing."""
    poses: Float[np.ndarray, "N 3 4"]
    """Camera-to-world, OpenGL convention."""
    near: Float[np.ndarray, "N"]
    """Per-view bounds on the depth (along the optical axis) of what the view sees, as in LLFF."""
    far: Float[np.ndarray, "N"]


def camera_poses(rig: CameraRig) -> Float[np.ndarray, "N 3 4"]:
    """Camera-to-world matrices (OpenGL) of the rig, world +y up."""
    target = np.asarray(rig.target, dtype=np.float64)
    poses = []
    for index in range(rig.num_views):
        angle = 2.0 * math.pi * index / rig.num_views
        eye = target + np.array(
            [rig.spread[0] * math.cos(angle), rig.spread[1] * math.sin(angle), rig.distance]
        )
        backwards = _normalize(eye - target)
        right = _normalize(np.cross([0.0, 1.0, 0.0], backwards))
        up = np.cross(backwards, right)
        poses.append(np.stack([right, up, backwards, eye], axis=1))
    return np.stack(poses)


def pixel_rays(
    spec: SceneSpec, c2w: Float[np.ndarray, "3 4"]
) -> Tuple[Float[np.ndarray, "H W 3"], Float[np.ndarray, "H W 3"]]:
    """World-space origins and unit directions of the rays through each pixel centre."""
    focal = spec.rig.focal
    u = np.arange(spec.width) + 0.5 - spec.width / 2.0
    v = np.arange(spec.height) + 0.5 - spec.height / 2.0
    uu, vv = np.meshgrid(u, v, indexing="xy")
    camera_dirs = np.stack([uu / focal, -vv / focal, -np.ones_like(uu)], axis=-1)
    directions = _normalize(camera_dirs @ c2w[:, :3].T)
    origins = np.broadcast_to(c2w[:, 3], directions.shape).copy()
    return origins, directions


class RayHits(NamedTuple):
    """What a batch of rays hits first: exact positions, labels and shaded colours."""

    distance: Float[np.ndarray, "P"]
    """Distance along each (unit) ray to its first hit; inf on a miss."""
    points: Float[np.ndarray, "P 3"]
    """Hit positions (the ray origin on a miss)."""
    labels: Int[np.ndarray, "P"]
    """Index into ``SceneSpec.labels`` of the surface hit; -1 on a miss."""
    colours: Float[np.ndarray, "P 3"]
    """Shaded RGB in [0, 1] as the views show it (0 on a miss)."""


def cast_rays(
    spec: SceneSpec, origins: Float[np.ndarray, "P 3"], directions: Float[np.ndarray, "P 3"]
) -> RayHits:
    """Nearest hit of each ray, with Lambert + ambient shading and the exact label there.

    Rendering the views and sampling labelled surface points (the point-cloud path) share it,
    so the points carry exactly the colours and labels the images show.
    """
    surfaces = spec.surfaces
    label_index = {label: index for index, label in enumerate(spec.labels)}
    light = _normalize(np.asarray(spec.light_direction, dtype=np.float64))
    best_t = np.full(len(origins), np.inf)
    best_surface = np.full(len(origins), -1)
    best_normal = np.zeros_like(origins)
    for surface_index, surface in enumerate(surfaces):
        t, normal = _intersect(surface, origins, directions)
        closer = t < best_t
        best_t[closer] = t[closer]
        best_surface[closer] = surface_index
        best_normal[closer] = normal[closer]
    hit = best_surface >= 0
    points = origins + directions * np.where(hit, best_t, 0.0)[:, None]
    # Normals face the viewer so that both sides of a plane are lit the same way.
    facing = np.sum(best_normal * directions, axis=-1, keepdims=True) > 0
    normals = np.where(facing, -best_normal, best_normal)
    shade = spec.ambient + (1.0 - spec.ambient) * np.clip(normals @ light, 0.0, None)
    colour = np.zeros_like(origins)
    labels = np.full(len(origins), -1)
    for surface_index, surface in enumerate(surfaces):
        mine = best_surface == surface_index
        if not mine.any():
            continue
        pattern = _texture(surface, points[mine], spec.seed + surface_index)
        colour[mine] = np.asarray(surface.albedo) * pattern[:, None] * shade[mine, None]
        labels[mine] = label_index[surface.label]
    return RayHits(distance=best_t, points=points, labels=labels, colours=colour)


def render_scene(spec: SceneSpec) -> RenderedScene:
    """Ray-casts every view: nearest hit, Lambert + ambient shading, exact label per pixel."""
    poses = camera_poses(spec.rig)
    images, label_maps, nears, fars = [], [], [], []
    for c2w in poses:
        origins, directions = pixel_rays(spec, c2w)
        hits = cast_rays(spec, origins.reshape(-1, 3), directions.reshape(-1, 3))
        hit = hits.labels >= 0
        # LLFF bounds are depths along the optical axis (-z of the camera), not ray lengths.
        depth = hits.distance[hit] * (directions.reshape(-1, 3)[hit] @ -c2w[:, 2])
        nears.append(0.9 * depth.min() if depth.size else 0.1)
        fars.append(1.1 * depth.max() if depth.size else 1.0)
        shape = (spec.height, spec.width)
        images.append(np.round(np.clip(hits.colours, 0.0, 1.0) * 255).astype(np.uint8).reshape(*shape, 3))
        label_maps.append(hits.labels.reshape(shape))
    return RenderedScene(
        images=np.stack(images),
        label_maps=np.stack(label_maps),
        poses=poses,
        near=np.asarray(nears),
        far=np.asarray(fars),
    )


def opengl_to_llff(poses: Float[np.ndarray, "N 3 4"]) -> Float[np.ndarray, "N 3 4"]:
    """Reorders rotation columns [right, up, backwards] into LLFF's [down, right, backwards]."""
    return np.concatenate([-poses[:, :, 1:2], poses[:, :, 0:1], poses[:, :, 2:4]], axis=-1)


def mask_folder_name(view_index: int) -> str:
    """Mask folder name of a view; the 3D-OVS dataset zero-pads to two digits ("00", "03")."""
    return f"{view_index:02d}"


def write_scene(spec: SceneSpec, root: Path, mask_views: Sequence[int]) -> Path:
    """Renders ``spec`` and writes it in the 3D-OVS layout (SPEC section 3) under ``root``.

    Writes ``images/000.png...``, ``poses_bounds.npy`` (LLFF: [down, right, backwards |
    t | hwf] flattened, then near, far), ``segmentations/classes.txt`` and, for every view
    in ``mask_views``, one 0/255 mask per label of the scene, all-zero where the label is
    not visible: every mask view then has the full class list, as the 3D-OVS evaluation expects.
    """
    root = Path(root)
    for label in spec.labels:
        if "/" in label or "\\" in label:
            raise ValueError(f"Label '{label}' cannot be a mask file name; remove the slash.")
    scene = render_scene(spec)
    num_views = len(scene.images)
    for view in mask_views:
        if not 0 <= view < num_views:
            raise ValueError(f"Mask view {view} does not exist; the scene has views 0..{num_views - 1}.")

    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(scene.images):
        Image.fromarray(image).save(image_dir / f"{index:03d}.png")

    hwf = np.broadcast_to([[spec.height], [spec.width], [spec.rig.focal]], (num_views, 3, 1))
    llff = np.concatenate([opengl_to_llff(scene.poses), hwf], axis=-1).reshape(num_views, 15)
    bounds = np.stack([scene.near, scene.far], axis=-1)
    np.save(root / "poses_bounds.npy", np.concatenate([llff, bounds], axis=-1))

    segmentation_dir = root / "segmentations"
    segmentation_dir.mkdir(exist_ok=True)
    (segmentation_dir / "classes.txt").write_text("".join(f"{label}\n" for label in spec.labels), encoding="utf-8")
    for view in mask_views:
        view_dir = segmentation_dir / mask_folder_name(view)
        view_dir.mkdir(exist_ok=True)
        for label_id, label in enumerate(spec.labels):
            mask: Bool[np.ndarray, "H W"] = scene.label_maps[view] == label_id
            Image.fromarray(mask.astype(np.uint8) * 255).save(view_dir / f"{label}.png")
    return root


def _normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _intersect(
    surface: Primitive, origins: Float[np.ndarray, "P 3"], directions: Float[np.ndarray, "P 3"]
) -> Tuple[Float[np.ndarray, "P"], Float[np.ndarray, "P 3"]]:
    """Distance to the first hit in front of each ray (inf on a miss) and the outward normal there."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(surface, Sphere):
            center = np.asarray(surface.center)
            offset = origins - center
            b = np.sum(offset * directions, axis=-1)
            discriminant = b**2 - (np.sum(offset**2, axis=-1) - surface.radius**2)
            root = np.sqrt(np.maximum(discriminant, 0.0))
            t = np.where(-b - root > _EPS, -b - root, -b + root)
            t = np.where((discriminant >= 0) & (t > _EPS), t, np.inf)
            normal = (origins + directions * np.where(np.isfinite(t), t, 0.0)[:, None] - center) / surface.radius
            return t, normal
        if isinstance(surface, Box):
            lower, upper = np.asarray(surface.lower), np.asarray(surface.upper)
            t_lower, t_upper = (lower - origins) / directions, (upper - origins) / directions
            t_enter = np.nanmax(np.minimum(t_lower, t_upper), axis=-1)
            t_exit = np.nanmin(np.maximum(t_lower, t_upper), axis=-1)
            t = np.where(t_enter > _EPS, t_enter, t_exit)
            t = np.where((t_exit >= t_enter) & (t > _EPS), t, np.inf)
            # The face hit is the axis on which the point lies farthest out, relative to the half size.
            points = origins + directions * np.where(np.isfinite(t), t, 0.0)[:, None]
            relative = (points - (lower + upper) / 2) / ((upper - lower) / 2)
            axis = np.argmax(np.abs(relative), axis=-1)
            normal = np.zeros_like(points)
            normal[np.arange(len(points)), axis] = np.sign(relative[np.arange(len(points)), axis])
            return t, normal
        t = (surface.offset - origins[:, surface.axis]) / directions[:, surface.axis]
        t = np.where(t > _EPS, t, np.inf)
        normal = np.zeros_like(origins)
        normal[:, surface.axis] = 1.0
        return t, normal


def _texture(surface: Primitive, points: Float[np.ndarray, "P 3"], seed: int) -> Float[np.ndarray, "P"]:
    """Brightness factor in [0.6, 1] of the surface's pattern at world points."""
    if surface.texture == "none":
        return np.ones(len(points))
    points = points.copy()
    # Snap hit points onto the exact face coordinate, so floor() cannot flicker between views.
    if isinstance(surface, Plane):
        points[:, surface.axis] = surface.offset
    elif isinstance(surface, Box):
        for corner in (np.asarray(surface.lower), np.asarray(surface.upper)):
            points = np.where(np.isclose(points, corner, rtol=0.0, atol=1e-7), corner, points)
    scaled = points * surface.texture_frequency
    if surface.texture == "stripes":
        pattern = (np.floor(scaled[:, 0] + 0.5 * scaled[:, 1]) % 2).astype(np.float64)
    elif surface.texture == "checker":
        pattern = (np.floor(scaled).sum(axis=-1) % 2).astype(np.float64)
    else:
        pattern = _value_noise(scaled, seed)
    return 0.6 + 0.4 * pattern


def _value_noise(points: Float[np.ndarray, "P 3"], seed: int) -> Float[np.ndarray, "P"]:
    """Smooth lattice noise in [0, 1]: hashed random values at integer points, interpolated."""
    table = np.random.default_rng(seed).random(256)
    permutation = np.random.default_rng(seed + 1).permutation(256)
    cell = np.floor(points).astype(np.int64)
    fraction = points - cell
    weight = fraction * fraction * (3.0 - 2.0 * fraction)
    result = np.zeros(len(points))
    for corner in np.ndindex(2, 2, 2):
        lattice = (cell + np.asarray(corner)) % 256
        hashed = permutation[(permutation[(permutation[lattice[:, 0]] + lattice[:, 1]) % 256] + lattice[:, 2]) % 256]
        corner_weight = np.prod(np.where(np.asarray(corner) == 1, weight, 1.0 - weight), axis=-1)
        result += corner_weight * table[hashed]
    return result
