"""The ``ovs3d-data`` dataparser specification (entry point only; see config.py for why apart)."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig

ovs3d_dataparser = DataParserSpecification(
    config=Ovs3dDataParserConfig(),
    description="3D-OVS / LLFF scenes (images, poses_bounds.npy, segmentations/) or nerfstudio data + labels.",
)
