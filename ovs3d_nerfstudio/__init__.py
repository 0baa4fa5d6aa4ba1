"""3D-OVS open-vocabulary segmentation as a nerfstudio method. Importing this is light."""

from ovs3d_nerfstudio.checkpoints import register_checkpoint_globals
from ovs3d_nerfstudio.errors import install_excepthook

register_checkpoint_globals()
install_excepthook()
