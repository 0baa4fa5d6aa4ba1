"""Benchmark layouts: procedural scenes shaped like the 3D-OVS dataset, with exact masks.

Each layout is a function ``seed -> SceneSpec`` built from the primitives of
:mod:`ovs3d_nerfstudio.data.procedural`. What the layouts share, because it is what makes
3D-OVS hard for CLIP:

* forward-facing captures of 24 views (the dataset has 20-30);
* objects of very different sizes, among them a *small* one (< 2 % of the pixels) in front
  of a large textured background surface, which CLIP's area-dominated crop embeddings miss;
* two look-alike objects of the same colour that differ in texture, size or shape;
* labels in the dataset's style, object phrases first and one or two background words last
  ("green lawn", "desktop", "brick wall").

``seed`` moves the objects along the floor by at most ``_JITTER`` units and seeds the noise
textures; nothing else is random, so a seed fixes every pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np

from ovs3d_nerfstudio.data.procedural import Box, CameraRig, Plane, SceneSpec, Sphere, Vec3, write_scene

NUM_VIEWS = 24
"""Views per layout; the 3D-OVS scenes have 20-30."""
NUM_MASK_VIEWS = 5
"""Annotated views per scene, as in the 3D-OVS dataset."""
DEFAULT_SIZE = (160, 120)
"""Written image size (width, height): 80x60 rays at ``ray_downscale 2``, CPU-feasible."""

_FLOOR = -0.6
"""Height of the floor plane; objects rest on it."""
_JITTER = 0.06
"""Largest seed-driven shift of an object along the floor, small enough to keep every layout's
occlusions (and so its small object's visibility) as designed."""
_DESK = -1.0
"""Depth of the desktop plane of the top-down ``desk`` layout."""


class _Placer:
    """Seeded positions on the floor: each call jitters (x, z) and keeps the object resting on it."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def on_floor(self, x: float, z: float, lift: float) -> Vec3:
        dx, dz = self._rng.uniform(-_JITTER, _JITTER, size=2)
        return (x + float(dx), _FLOOR + lift, z + float(dz))

    def box(self, x: float, z: float, size: Vec3) -> Tuple[Vec3, Vec3]:
        """Corners of a box of ``size`` (x, y, z extents) centred at (x, z) on the floor."""
        cx, _, cz = self.on_floor(x, z, 0.0)
        sx, sy, sz = size
        return (cx - sx / 2, _FLOOR, cz - sz / 2), (cx + sx / 2, _FLOOR + sy, cz + sz / 2)


def _rig(num_views: int, width: int, target: Vec3 = (0.0, -0.2, 0.0)) -> CameraRig:
    """Forward-facing rig, 44 degree horizontal field of view whatever the image size."""
    return CameraRig(num_views=num_views, target=target, distance=3.0, spread=(0.35, 0.2), focal=1.25 * width)


def fruit_lawn(
    seed: int = 0, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], num_views: int = NUM_VIEWS
) -> SceneSpec:
    """Like the dataset's *lawn*: fruit and a bottle on grass before a stone wall.

    Look-alikes: a speckled red apple and a smaller, smooth red tomato. Small object: a
    yellow-green tennis ball on the green lawn, in front of everything.
    """
    place = _Placer(seed)
    bottle_lower, bottle_upper = place.box(0.55, -0.35, (0.24, 0.75, 0.24))
    return SceneSpec(
        objects=[
            Sphere(label="red apple", albedo=(0.78, 0.1, 0.08), texture="noise", texture_frequency=16.0,
                   center=place.on_floor(-0.55, -0.1, 0.3), radius=0.3),
            Sphere(label="red tomato", albedo=(0.85, 0.13, 0.07), center=place.on_floor(0.05, 0.05, 0.2), radius=0.2),
            Sphere(label="a yellow tennis ball", albedo=(0.82, 0.9, 0.2), center=place.on_floor(-0.1, 0.75, 0.1),
                   radius=0.1),
            Box(label="blue water bottle", albedo=(0.18, 0.38, 0.85), lower=bottle_lower, upper=bottle_upper),
        ],
        floor=Plane(label="green lawn", albedo=(0.22, 0.62, 0.18), texture="noise", texture_frequency=12.0,
                    axis=1, offset=_FLOOR),
        wall=Plane(label="grey stone wall", albedo=(0.55, 0.55, 0.53), texture="noise", texture_frequency=9.0,
                   axis=2, offset=-1.6),
        rig=_rig(num_views, width),
        width=width,
        height=height,
        seed=seed,
    )


def desk(
    seed: int = 0, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], num_views: int = NUM_VIEWS
) -> SceneSpec:
    """Like the dataset's *office_desk*, seen from above: office objects on a wooden desktop.

    The desktop is the background plane facing the cameras and objects stand out of it
    towards them, so that the whole view is desk, like a top-down capture. Look-alikes: a
    black stapler and a smaller black computer mouse (smooth, same colour, different shape).
    Small objects: the mouse and orange sticky notes, lying on the striped desktop.
    """
    place = _Placer(seed)

    def on_desk(x: float, y: float, size: Vec3) -> Tuple[Vec3, Vec3]:
        """Corners of a box with footprint (sx, sy) centred at (x, y) and ``sz`` tall out of the desk."""
        cx, _, cy = place.on_floor(x, y, 0.0)
        sx, sy, sz = size
        return (cx - sx / 2, cy - sy / 2, _DESK), (cx + sx / 2, cy + sy / 2, _DESK + sz)

    notebook = on_desk(0.3, 0.25, (1.0, 0.72, 0.05))
    mug = on_desk(-0.6, 0.35, (0.4, 0.4, 0.4))
    stapler = on_desk(0.4, -0.45, (0.52, 0.15, 0.15))
    mouse = on_desk(-0.35, -0.4, (0.14, 0.22, 0.08))
    notes = on_desk(-0.85, -0.3, (0.2, 0.2, 0.03))
    return SceneSpec(
        objects=[
            Box(label="white notebook", albedo=(0.92, 0.92, 0.9), texture="stripes", texture_frequency=14.0,
                lower=notebook[0], upper=notebook[1]),
            Box(label="blue ceramic mug", albedo=(0.15, 0.3, 0.88), lower=mug[0], upper=mug[1]),
            Box(label="black stapler", albedo=(0.09, 0.09, 0.1), lower=stapler[0], upper=stapler[1]),
            Box(label="black computer mouse", albedo=(0.1, 0.1, 0.11), lower=mouse[0], upper=mouse[1]),
            Box(label="orange sticky notes", albedo=(0.95, 0.55, 0.1), lower=notes[0], upper=notes[1]),
        ],
        wall=Plane(label="desktop", albedo=(0.55, 0.36, 0.2), texture="stripes", texture_frequency=5.0,
                   axis=2, offset=_DESK),
        rig=_rig(num_views, width, target=(0.0, 0.0, _DESK + 0.2)),
        width=width,
        height=height,
        seed=seed,
    )


def shelf(
    seed: int = 0, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], num_views: int = NUM_VIEWS
) -> SceneSpec:
    """Like the dataset's *snacks*: packaged food on a wooden shelf before a brick wall.

    Look-alikes: a large speckled potato chips bag and a small smooth yellow lemon. Small
    object: the lemon in front. The pink gift box is checkered, the tea can striped.
    """
    place = _Placer(seed)
    chips = place.box(-0.45, -0.35, (0.55, 0.7, 0.22))
    can = place.box(0.3, -0.2, (0.22, 0.42, 0.22))
    gift = place.box(0.75, 0.2, (0.32, 0.26, 0.32))
    return SceneSpec(
        objects=[
            Box(label="potato chips bag", albedo=(0.92, 0.76, 0.16), texture="noise", texture_frequency=18.0,
                lower=chips[0], upper=chips[1]),
            Box(label="green tea can", albedo=(0.12, 0.55, 0.3), texture="stripes", texture_frequency=12.0,
                lower=can[0], upper=can[1]),
            Box(label="pink gift box", albedo=(0.93, 0.5, 0.66), texture="checker", texture_frequency=9.0,
                lower=gift[0], upper=gift[1]),
            Sphere(label="yellow lemon", albedo=(0.95, 0.85, 0.15), center=place.on_floor(-0.15, 0.7, 0.11),
                   radius=0.11),
        ],
        floor=Plane(label="wooden shelf", albedo=(0.5, 0.33, 0.18), texture="stripes", texture_frequency=6.0,
                    axis=1, offset=_FLOOR),
        wall=Plane(label="brick wall", albedo=(0.62, 0.26, 0.18), texture="checker", texture_frequency=4.0,
                   axis=2, offset=-1.6),
        rig=_rig(num_views, width),
        width=width,
        height=height,
        seed=seed,
    )


def living_room(
    seed: int = 0, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], num_views: int = NUM_VIEWS
) -> SceneSpec:
    """Like the dataset's *sofa* and *room*: a sofa with a cushion, a teddy bear and a toy car.

    The sofa is two boxes (seat and backrest) with one label, as a real object is many
    surfaces. Look-alikes: the speckled brown teddy bear on the striped brown wooden floor
    (same colour, different texture). Small object: the red toy car on the floor in front.
    """
    place = _Placer(seed)
    seat = place.box(-0.2, -0.85, (1.6, 0.45, 0.7))
    backrest = ((seat[0][0], _FLOOR, seat[0][2] - 0.3), (seat[1][0], _FLOOR + 0.95, seat[0][2]))
    cushion_x = 0.5 * (seat[0][0] + seat[1][0]) - 0.1
    cushion = ((cushion_x - 0.22, seat[1][1], seat[0][2]), (cushion_x + 0.22, seat[1][1] + 0.38, seat[0][2] + 0.14))
    car = place.box(-0.45, 0.55, (0.24, 0.1, 0.14))
    return SceneSpec(
        objects=[
            Box(label="grey fabric sofa", albedo=(0.5, 0.5, 0.52), texture="noise", texture_frequency=20.0,
                lower=seat[0], upper=seat[1]),
            Box(label="grey fabric sofa", albedo=(0.5, 0.5, 0.52), texture="noise", texture_frequency=20.0,
                lower=backrest[0], upper=backrest[1]),
            Box(label="blue cushion", albedo=(0.2, 0.35, 0.82), lower=cushion[0], upper=cushion[1]),
            Sphere(label="brown teddy bear", albedo=(0.52, 0.33, 0.17), texture="noise", texture_frequency=16.0,
                   center=place.on_floor(0.85, -0.45, 0.26), radius=0.26),
            Box(label="red toy car", albedo=(0.85, 0.12, 0.1), lower=car[0], upper=car[1]),
        ],
        floor=Plane(label="wooden floor", albedo=(0.55, 0.36, 0.2), texture="stripes", texture_frequency=5.0,
                    axis=1, offset=_FLOOR),
        wall=Plane(label="white wall", albedo=(0.9, 0.9, 0.88), axis=2, offset=-1.6),
        rig=_rig(num_views, width),
        width=width,
        height=height,
        seed=seed,
    )


def scene_layouts() -> Dict[str, Callable[..., SceneSpec]]:
    """Benchmark layouts by name; each is called as ``layout(seed, width=..., height=..., num_views=...)``."""
    return {"fruit_lawn": fruit_lawn, "desk": desk, "shelf": shelf, "living_room": living_room}


def benchmark_mask_views(num_views: int = NUM_VIEWS, count: int = NUM_MASK_VIEWS) -> Tuple[int, ...]:
    """Evenly spread annotated views ((0, 6, 12, 17, 23) for 24 views), like the dataset's five."""
    return tuple(int(v) for v in np.unique(np.linspace(0, num_views - 1, count).round().astype(int)))


def write_benchmark_scene(
    name: str,
    root: Path,
    seed: int = 0,
    width: int = DEFAULT_SIZE[0],
    height: int = DEFAULT_SIZE[1],
    num_views: int = NUM_VIEWS,
    num_mask_views: int = NUM_MASK_VIEWS,
) -> Path:
    """Writes layout ``name`` in the 3D-OVS layout under ``root`` with masks for ``num_mask_views`` views."""
    layouts = scene_layouts()
    if name not in layouts:
        raise ValueError(f"Unknown benchmark layout '{name}'; choose one of {', '.join(layouts)}.")
    spec = layouts[name](seed, width=width, height=height, num_views=num_views)
    return write_scene(spec, Path(root), benchmark_mask_views(num_views, num_mask_views))
