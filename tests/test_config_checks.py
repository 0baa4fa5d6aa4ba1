"""Every ovs3d option a user can get wrong on the command line ends in one line naming the flag."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tyro

from ovs3d_nerfstudio.config import ovs3d_method
from ovs3d_nerfstudio.config_checks import (
    DATAMANAGER_FLAGS,
    DATAMANAGER_RULES,
    DATAPARSER_FLAGS,
    DATAPARSER_RULES,
    MODEL_FLAGS,
    MODEL_RULES,
    check_pipeline_config,
)
from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig, clip_view_subset
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.data.procedural import write_scene
from tiny_scene import tiny_scene_spec
from ovs3d_nerfstudio.errors import ConfigError
from ovs3d_nerfstudio.synthetic.profiles import set_path
from tiny_run import tiny_train_args

# One value each rule must reject (the attribute path below the pipeline config).
BAD_VALUES = {
    "datamanager.train_num_rays_per_batch": 0,
    "datamanager.ray_downscale": 0,
    "datamanager.clip_view_fraction": 1.5,
    "datamanager.pyramid.patch_fractions": (0.2, 0.0),
    "datamanager.clip.batch_size": 0,
    "datamanager.num_patches": 0,
    "datamanager.patch_tokens": 1,
    "datamanager.patch_downscale": 0,
    "datamanager.patch_rays_per_token": 0,
    "datamanager.camera_res_scale_factor": 0.0,
    "datamanager.cache_dir": Path(__file__),
    "datamanager.dataparser.eval_interval": 0,
    "datamanager.dataparser.downscale_factor": -2.0,
    "datamanager.dataparser.scene_scale": 0.0,
    "datamanager.dataparser.scale_factor": 0.0,
    "model.fda_temperature": 0.0,
    "model.fda_shift": 1.0,
    "model.near_plane": -0.1,
    "model.appearance_embedding_dim": -1,
    "model.proposal_warmup": -1,
    "model.num_proposal_samples_per_ray": (64, 0),
    "model.schedule.reconstruction_steps": -1,
    "model.schedule.frozen_steps": -5,
    "model.schedule.joint_steps": -1,
    "model.schedule.reconstruction_lr": 0.0,
    "model.schedule.reconstruction_lr_final": 0.0,
    "model.schedule.segmentation_decay": 0.0,
    "model.schedule.frozen_lr_volume": -0.02,
    "model.schedule.frozen_lr_mlp": -1e-4,
    "model.schedule.joint_lr_volume": -5e-3,
    "model.schedule.joint_lr_mlp": -5e-5,
}
for _name in ("clip_loss_mult", "rda_loss_mult", "fda_lambda_pos", "fda_lambda_neg", "interlevel_loss_mult", "distortion_loss_mult"):
    BAD_VALUES[f"model.{_name}"] = -1.0
for _rule in MODEL_RULES:
    BAD_VALUES.setdefault(f"model.{_rule.path}", 0)  # the remaining rules all ask for a whole number >= 1

RULE_PATHS = (
    [f"datamanager.{rule.path}" for rule in DATAMANAGER_RULES]
    + [f"datamanager.dataparser.{rule.path}" for rule in DATAPARSER_RULES]
    + [f"model.{rule.path}" for rule in MODEL_RULES]
)


def flag_of(path: str) -> str:
    """The flag a user types for an attribute path below the pipeline config."""
    if path.startswith("datamanager.dataparser."):
        return DATAPARSER_FLAGS + path.removeprefix("datamanager.dataparser.").replace("_", "-")
    return "--pipeline." + path.replace("_", "-")


def pipeline_with(path: str, value):
    config = copy.deepcopy(ovs3d_method.config)
    set_path(config, f"pipeline.{path}", value)
    return config.pipeline


def test_defaults_pass():
    check_pipeline_config(copy.deepcopy(ovs3d_method.config.pipeline))


def test_every_rule_has_a_bad_value_here():
    assert sorted(BAD_VALUES) == sorted(RULE_PATHS)


@pytest.mark.parametrize("path", RULE_PATHS)
def test_each_bad_value_is_one_line_naming_the_flag(path: str):
    value = BAD_VALUES[path]
    with pytest.raises(ConfigError) as raised:
        check_pipeline_config(pipeline_with(path, value))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{flag_of(path)} ")
    assert "must be" in message


def test_several_problems_are_reported_together():
    config = pipeline_with("datamanager.ray_downscale", 0)
    config.model.fda_temperature = 0.0
    with pytest.raises(ConfigError, match=r"ray-downscale 0: .*; --pipeline.model.fda-temperature 0.0: .*these options"):
        check_pipeline_config(config)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("model.far_plane", 0.01, "far-plane 0.01: must be greater than --pipeline.model.near-plane"),
        ("model.max_res", 8, "max-res 8: must be >= --pipeline.model.base-res 16"),
        ("model.num_proposal_samples_per_ray", (64,), "one number per proposal network"),
    ],
)
def test_options_that_must_agree(path: str, value, expected: str):
    with pytest.raises(ConfigError, match=expected):
        check_pipeline_config(pipeline_with(path, value))


def test_all_phases_empty_is_an_error():
    config = copy.deepcopy(ovs3d_method.config.pipeline)
    config.model.schedule.reconstruction_steps = config.model.schedule.frozen_steps = 0
    config.model.schedule.joint_steps = 0
    with pytest.raises(ConfigError, match="all three phases have 0 steps"):
        check_pipeline_config(config)


def test_flags_in_messages_are_real_command_line_flags():
    method_flags = {
        option for action in tyro.extras.get_parser(type(ovs3d_method.config), default=ovs3d_method.config)._actions
        for option in action.option_strings
    }
    dataparser_flags = {
        f"ovs3d-data {option}"
        for action in tyro.extras.get_parser(Ovs3dDataParserConfig)._actions
        for option in action.option_strings
    }
    for path in RULE_PATHS:
        flag = flag_of(path)
        assert flag in (dataparser_flags if flag.startswith(DATAPARSER_FLAGS) else method_flags), flag
    assert DATAMANAGER_FLAGS.startswith("--pipeline.") and MODEL_FLAGS.startswith("--pipeline.")


def test_clip_view_fraction_out_of_range_names_the_flag():
    with pytest.raises(ConfigError, match="--pipeline.datamanager.clip-view-fraction 0.0"):
        clip_view_subset(10, 0.0)


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return write_scene(tiny_scene_spec(seed=1), tmp_path_factory.mktemp("checks") / "scene", mask_views=[0])


def tiny_datamanager(scene: Path, cache: Path, tiny_clip_config, tiny_dino_config, **options) -> Ovs3dDataManagerConfig:
    config = Ovs3dDataManagerConfig(
        dataparser=Ovs3dDataParserConfig(data=scene),
        clip=tiny_clip_config,
        dino=tiny_dino_config,
        cache_dir=cache,
        train_num_rays_per_batch=64,
        ray_downscale=2,
        num_patches=1,
        patch_tokens=2,
        patch_downscale=2,
    )
    config.pyramid.patch_fractions = (0.5,)
    for name, value in options.items():
        setattr(config, name, value)
    return config


@pytest.mark.parametrize(
    "options, message",
    [
        # The tiny DINO has stride 8: at most 8 rays per token side.
        ({"patch_rays_per_token": 9}, r"--pipeline.datamanager.patch-rays-per-token 9: must be between 1 .* stride 8"),
        # 6 tokens x 8 px = 48 px patches do not fit 32x24 px images (64x48 at 1/2).
        ({"patch_tokens": 6}, r"FDA patches of 48 px do not fit images of 32x24 px .* --pipeline.datamanager.patch-tokens"),
    ],
)
def test_data_dependent_options_fail_at_setup(tiny_scene, tmp_path, tiny_clip_config, tiny_dino_config, options, message):
    config = tiny_datamanager(tiny_scene, tmp_path / "cache", tiny_clip_config, tiny_dino_config, **options)
    with pytest.raises(ConfigError, match=message):
        config.setup(device="cpu")


def test_bad_option_stops_the_datamanager_before_reading_images(tiny_scene, tmp_path, tiny_clip_config, tiny_dino_config):
    config = tiny_datamanager(tiny_scene, tmp_path / "cache", tiny_clip_config, tiny_dino_config, ray_downscale=0)
    with pytest.raises(ConfigError, match="ray-downscale 0"):
        config.setup(device="cpu")
    assert not (tmp_path / "cache").exists()  # no feature was computed


def run_ns_train(args: list, cwd: Path) -> subprocess.CompletedProcess:
    ns_train = Path(sys.executable).with_name("ns-train")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", COLUMNS="200")
    return subprocess.run([str(ns_train), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_ns_train_prints_one_line_and_writes_nothing(tiny_scene, tmp_path):
    args = tiny_train_args(tiny_scene, tmp_path / "outputs", tmp_path / "cache")
    args[args.index("--pipeline.datamanager.ray-downscale") + 1] = "0"
    result = run_ns_train(args, tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ovs3d: error:")]
    assert len(errors) == 1
    assert errors[0].startswith("ovs3d: error: --pipeline.datamanager.ray-downscale 0: must be a whole number >= 1")
    assert not (tmp_path / "cache").exists()  # stopped before any feature was computed


def test_a_value_refused_while_parsing_gets_the_parsers_message(tiny_scene, tmp_path):
    """PyramidConfig checks itself when tyro builds it: tyro prints the message (no traceback)."""
    args = tiny_train_args(tiny_scene, tmp_path / "outputs", tmp_path / "cache")
    position = args.index("--pipeline.datamanager.pyramid.patch-fractions")
    args[position + 1 : position + 4] = ["0"]
    result = run_ns_train(args, tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "--pipeline.datamanager.pyramid.patch-fractions: 0.0 is outside (0, 1]" in result.stderr
    assert not (tmp_path / "outputs").exists()
