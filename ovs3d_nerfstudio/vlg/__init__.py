"""The point-cloud path (3DSS-VLG, seed 003): points, voxels, a sparse 3D U-Net.

Imports nothing, like the package itself: nerfstudio imports every plugin for every command.
"""
