"""Datamanager input checks."""

import pytest

from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig, clip_view_subset
from ovs3d_nerfstudio.errors import UserFacingError


def test_another_dataparser_is_one_clear_error():
    config = Ovs3dDataManagerConfig(dataparser=BlenderDataParserConfig())
    with pytest.raises(UserFacingError, match="ovs3d-data"):
        config.setup(device="cpu")


def test_clip_views_are_evenly_spaced_and_never_empty():
    assert clip_view_subset(20, 1.0).tolist() == list(range(20))
    assert clip_view_subset(20, 0.1).tolist() == [0, 19]
    assert clip_view_subset(3, 0.01).tolist() == [0]
    with pytest.raises(ValueError):
        clip_view_subset(10, 0.0)
