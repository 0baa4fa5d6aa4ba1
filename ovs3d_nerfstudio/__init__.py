"""3D-OVS open-vocabulary segmentation as a nerfstudio method.

nerfstudio imports this package through its entry points before any ``ns-*`` command
runs, which is where the three process-wide fixes below belong.
"""

from ovs3d_nerfstudio.checkpoints import register_checkpoint_globals
from ovs3d_nerfstudio.errors import install_excepthook
from ovs3d_nerfstudio.render_support import provide_ffmpeg

register_checkpoint_globals()  # checkpoints load under torch >= 2.6 without env variables
install_excepthook()  # our user-facing errors print one message, not a traceback
provide_ffmpeg()  # ns-render videos work without a system ffmpeg
