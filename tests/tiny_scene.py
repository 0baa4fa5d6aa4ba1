"""The tiny procedural scene of the tests: 64x48 pixels, 8 views, exact masks."""

from __future__ import annotations

import numpy as np

from ovs3d_nerfstudio.data.procedural import Box, Plane, SceneSpec, Sphere, Vec3


def tiny_scene_spec(seed: int = 0) -> SceneSpec:
    """A 64x48, 8-view scene: a wood wall, a lawn floor and three objects of different sizes.

    ``seed`` jitters the object layout along the floor (by at most 0.08 units) and seeds the noise
    texture, so different seeds give different but equally well-framed scenes.
    """
    rng = np.random.default_rng(seed)

    def on_floor(x: float, y: float, z: float) -> Vec3:
        """Jitters a point along the floor (x, z) only, so that objects keep resting on it."""
        dx, dz = rng.uniform(-0.08, 0.08, size=2)
        return (x + float(dx), y, z + float(dz))

    apple_center = on_floor(-0.5, -0.3, 0.1)
    mug_lower = on_floor(0.15, -0.6, -0.15)
    lemon_center = on_floor(-0.05, -0.42, -0.55)
    return SceneSpec(
        objects=[
            Sphere(label="red apple", albedo=(0.85, 0.12, 0.1), texture="noise", center=apple_center, radius=0.3),
            Box(
                label="blue mug",
                albedo=(0.15, 0.3, 0.9),
                texture="checker",
                lower=mug_lower,
                upper=(mug_lower[0] + 0.45, mug_lower[1] + 0.55, mug_lower[2] + 0.35),
            ),
            Sphere(label="yellow lemon", albedo=(0.95, 0.85, 0.15), center=lemon_center, radius=0.18),
        ],
        floor=Plane(label="green lawn", albedo=(0.2, 0.65, 0.2), texture="noise", axis=1, offset=-0.6),
        wall=Plane(label="wood wall", albedo=(0.6, 0.42, 0.25), texture="stripes", axis=2, offset=-1.5),
        seed=seed,
    )
