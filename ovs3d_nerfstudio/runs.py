"""Loading a trained ovs3d run for our commands (``ovs3d-legend``, ``ovs3d-export``, ``ovs3d-camera-path``).

A wrong path, a file that is not a run config, or another method's run is refused with one
:class:`UserFacingError` before any model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.eval_utils import eval_setup

from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.model import SegmentationOptions
from ovs3d_nerfstudio.pipeline import Ovs3dPipeline


def load_ovs3d_config(config_path: Path) -> TrainerConfig:
    """Reads a trained ovs3d run's ``config.yml``."""
    config_path = Path(config_path)
    hint = "pass the config.yml of a trained ovs3d run (outputs/<experiment>/ovs3d/<timestamp>/config.yml)"
    if not config_path.is_file():
        raise UserFacingError(f"{config_path} is not a file: {hint}.")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserFacingError(f"{config_path} is not a nerfstudio run config ({error}): {hint}.") from error
    if not isinstance(config, TrainerConfig):
        raise UserFacingError(f"{config_path} is not a nerfstudio run config: {hint}.")
    if not isinstance(config.pipeline.model, SegmentationOptions):  # ovs3d or ovs3d-splat
        raise UserFacingError(f"{config_path} is a '{config.method_name}' run, not an ovs3d run: {hint}.")
    return config


def load_ovs3d_run(config_path: Path, test_mode: Literal["test", "val", "inference"] = "inference") -> Ovs3dPipeline:
    """The run's pipeline with its latest checkpoint, after :func:`load_ovs3d_config` has checked the file."""
    load_ovs3d_config(config_path)
    _, pipeline, _, _ = eval_setup(Path(config_path), test_mode=test_mode)
    return pipeline
