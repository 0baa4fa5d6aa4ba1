"""The Gaussian-splatting variant of the method: ``ns-train ovs3d-splat`` (docs/splat.md).

``rasterize_torch`` is the pure-torch CPU rasterizer; ``rasterize`` picks gsplat's CUDA
rasterizer or it by device; ``model``, ``datamanager``, ``pipeline`` and ``config`` make the
nerfstudio method. This package imports nothing here: nerfstudio imports every plugin for
every command, and gsplat's CUDA backend must only be reached on CUDA paths.
"""
