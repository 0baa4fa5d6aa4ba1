"""3D-OVS open-vocabulary segmentation as a nerfstudio method. Importing this is light."""

from ovs3d_nerfstudio.checkpoints import register_checkpoint_globals

register_checkpoint_globals()
