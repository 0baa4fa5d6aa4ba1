"""Teacher features pre-computed per training image: Alg. 1 window stores and their cache."""

from ovs3d_nerfstudio.features.cache import FeatureCache, default_cache_dir
from ovs3d_nerfstudio.features.clip_pyramid import (
    ClipFeatureStore,
    PixelClipPyramid,
    PyramidConfig,
    average_windows,
    extract_pyramid,
    extract_pyramid_sequential,
    patch_geometry,
    window_boxes,
)

__all__ = [
    "ClipFeatureStore",
    "FeatureCache",
    "PixelClipPyramid",
    "PyramidConfig",
    "average_windows",
    "default_cache_dir",
    "extract_pyramid",
    "extract_pyramid_sequential",
    "patch_geometry",
    "window_boxes",
]
