"""The Gaussian-splatting variant of the method (issue 13), under construction.

``rasterize_torch`` is the pure-torch CPU rasterizer; ``rasterize`` picks gsplat's CUDA
rasterizer or it by device. This package imports nothing here: nerfstudio imports every
plugin for every command, and gsplat must only be imported on CUDA paths.
"""
