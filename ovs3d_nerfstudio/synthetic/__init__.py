"""Synthetic open-vocabulary benchmark: procedural scenes with exact masks and hand-built teachers.

Real CLIP/DINO weights and the 3D-OVS dataset are not available everywhere; this package
gives scenes whose ground truth is known exactly and teachers whose behaviour (including
CLIP's failure on small objects) is documented in ``docs/synthetic-benchmark.md``. The training
profiles the demo and the benchmark lab (``benchmarks/lab``) share are in ``profiles.py``.
"""

from ovs3d_nerfstudio.synthetic.scenes import (
    benchmark_mask_views,
    desk,
    fruit_lawn,
    living_room,
    scene_layouts,
    shelf,
    write_benchmark_scene,
)
from ovs3d_nerfstudio.synthetic.teachers import (
    SyntheticClipParams,
    SyntheticClipTeacher,
    SyntheticDinoParams,
    SyntheticDinoTeacher,
    synthetic_clip,
    synthetic_dino,
)

__all__ = [
    "SyntheticClipParams",
    "SyntheticClipTeacher",
    "SyntheticDinoParams",
    "SyntheticDinoTeacher",
    "benchmark_mask_views",
    "desk",
    "fruit_lawn",
    "living_room",
    "scene_layouts",
    "shelf",
    "synthetic_clip",
    "synthetic_dino",
    "write_benchmark_scene",
]
