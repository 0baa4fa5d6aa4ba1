"""Checks of every ovs3d option a user can set from the command line, before any work starts.

A value outside its meaningful range would otherwise surface far from its cause: a
``ZeroDivisionError`` while loading images (``ray-downscale 0``), NaN losses thousands of
steps in (``fda-temperature 0``), or a shape error deep inside nerfstudio. Each rule names the
flag the user typed and the values it accepts, and all broken options are reported together
in one line (a :class:`ConfigError`, which the package's excepthook prints without a
traceback).

Options whose valid range depends on the data or the teachers (``ray-downscale`` must fit the
image size, ``patch-rays-per-token`` the DINO stride, a patch must fit the image) are checked
by the datamanager as soon as those are known, before the expensive work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.errors import ConfigError

if TYPE_CHECKING:
    from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig
    from ovs3d_nerfstudio.model import Ovs3dModelConfig
    from ovs3d_nerfstudio.pipeline import Ovs3dPipelineConfig


@dataclass(frozen=True)
class Rule:
    """One option's requirement: ``accepts(value)`` must hold; ``requirement`` says it in words."""

    path: str
    """Attribute path below the config the rule set applies to, e.g. ``pyramid.patch_fractions``."""
    accepts: Callable[[Any], bool]
    requirement: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(minimum: float) -> Callable[[Any], bool]:
    return lambda value: _number(value) and value >= minimum


def above(minimum: float) -> Callable[[Any], bool]:
    return lambda value: _number(value) and value > minimum


def each_at_least(minimum: float) -> Callable[[Any], bool]:
    return lambda values: len(values) > 0 and all(at_least(minimum)(v) for v in values)


def _not_a_file(path: Optional[Path]) -> bool:
    return path is None or not Path(path).exists() or Path(path).is_dir()


WHOLE_NUMBER = "a whole number >= {}"
WEIGHT = ">= 0 (0 switches the term off)"

DATAMANAGER_FLAGS = "--pipeline.datamanager."
DATAMANAGER_RULES: Tuple[Rule, ...] = (
    Rule("train_num_rays_per_batch", at_least(1), WHOLE_NUMBER.format(1)),
    Rule("ray_downscale", at_least(1), WHOLE_NUMBER.format(1) + " (1 = full resolution; the paper: 8)"),
    Rule(
        "clip_view_fraction",
        lambda v: v is None or (_number(v) and 0.0 < v <= 1.0),
        "in (0, 1] (1 = every view), or unset to follow --pipeline.model.variant",
    ),
    Rule(
        "pyramid.patch_fractions",
        lambda values: len(values) > 0 and all(_number(v) and 0.0 < v <= 1.0 for v in values),
        "one or more window sides in (0, 1], as fractions of the short image side (the paper: 0.2 0.142857 0.1)",
    ),
    Rule("clip.batch_size", lambda v: v is None or at_least(1)(v), WHOLE_NUMBER.format(1) + " (or None: automatic)"),
    Rule("num_patches", at_least(1), WHOLE_NUMBER.format(1)),
    Rule("patch_tokens", at_least(2), WHOLE_NUMBER.format(2) + " (FDA correlates the tokens of a patch)"),
    Rule("patch_downscale", above(0.0), "> 0 (the paper: 5; below 1 upsamples the patches)"),
    Rule(
        "patch_rays_per_token",
        lambda v: v is None or at_least(1)(v),
        WHOLE_NUMBER.format(1) + " and at most the DINO stride, or unset to follow --pipeline.model.variant",
    ),
    Rule("camera_res_scale_factor", above(0.0), "> 0"),
    Rule("cache_dir", _not_a_file, "a folder, not an existing file"),
)

DATAPARSER_FLAGS = "ovs3d-data --"
DATAPARSER_RULES: Tuple[Rule, ...] = (
    Rule("eval_interval", at_least(1), WHOLE_NUMBER.format(1)),
    Rule("downscale_factor", above(0.0), "> 0 (1 = full resolution)"),
    Rule("scene_scale", above(0.0), "> 0"),
    Rule("scale_factor", above(0.0), "> 0"),
)

MODEL_FLAGS = "--pipeline.model."
MODEL_RULES: Tuple[Rule, ...] = (
    *(
        Rule(name, at_least(0.0), WEIGHT)
        for name in (
            "clip_loss_mult",
            "rda_loss_mult",
            "fda_lambda_pos",
            "fda_lambda_neg",
            "interlevel_loss_mult",
            "distortion_loss_mult",
        )
    ),
    Rule("fda_temperature", above(0.0), "> 0 (the paper: 0.2)"),
    Rule("fda_shift", lambda v: _number(v) and -1.0 < v < 1.0, "in (-1, 1), a DINO cosine (the paper: 0.7)"),
    Rule("near_plane", at_least(0.0), ">= 0"),
    *(
        Rule(name, at_least(1), WHOLE_NUMBER.format(1))
        for name in (
            "fda_chunk_size",
            "num_levels",
            "base_res",
            "log2_hashmap_size",
            "features_per_level",
            "hidden_dim",
            "appearance_dim",
            "hidden_dim_color",
            "clip_head_layers",
            "clip_head_width",
            "selection_num_levels",
            "selection_max_res",
            "selection_log2_hashmap_size",
            "num_nerf_samples_per_ray",
            "num_proposal_iterations",
            "proposal_update_every",
            "proposal_weights_anneal_max_num_iters",
            "eval_num_rays_per_chunk",
        )
    ),
    Rule("appearance_embedding_dim", at_least(0), WHOLE_NUMBER.format(0)),
    Rule("proposal_warmup", at_least(0), WHOLE_NUMBER.format(0)),
    Rule("num_proposal_samples_per_ray", each_at_least(1), "whole numbers >= 1, one per proposal network"),
    *(Rule(f"schedule.{name}_steps", at_least(0), WHOLE_NUMBER.format(0)) for name in ("reconstruction", "frozen", "joint")),
    *(
        Rule(f"schedule.{name}", above(0.0), "> 0")
        for name in ("reconstruction_lr", "reconstruction_lr_final", "segmentation_decay")
    ),
    *(
        Rule(f"schedule.{name}", at_least(0.0), ">= 0")
        for name in ("frozen_lr_volume", "frozen_lr_mlp", "joint_lr_volume", "joint_lr_mlp")
    ),
)


def _value(config: Any, path: str) -> Any:
    for name in path.split("."):
        config = getattr(config, name)
    return config


def _format(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) or "(nothing)"
    return str(value)


def rule_problems(config: Any, rules: Tuple[Rule, ...], flag_prefix: str) -> List[str]:
    """``"<flag> <value>: must be <requirement>"`` for every rule ``config`` breaks."""
    problems = []
    for rule in rules:
        value = _value(config, rule.path)
        if not rule.accepts(value):
            flag = flag_prefix + rule.path.replace("_", "-")
            problems.append(f"{flag} {_format(value)}: must be {rule.requirement}")
    return problems


def datamanager_problems(config: "Ovs3dDataManagerConfig") -> List[str]:
    """The datamanager's options and, with ``ovs3d-data``, the dataparser's."""
    problems = rule_problems(config, DATAMANAGER_RULES, DATAMANAGER_FLAGS)
    if isinstance(config.dataparser, Ovs3dDataParserConfig):
        problems += rule_problems(config.dataparser, DATAPARSER_RULES, DATAPARSER_FLAGS)
    return problems


def model_problems(config: "Ovs3dModelConfig") -> List[str]:
    """The model's and the schedule's options, alone and against each other."""
    problems = rule_problems(config, MODEL_RULES, MODEL_FLAGS)
    if _number(config.far_plane) and _number(config.near_plane) and config.far_plane <= config.near_plane:
        problems.append(f"{MODEL_FLAGS}far-plane {config.far_plane}: must be greater than {MODEL_FLAGS}near-plane")
    if _number(config.max_res) and _number(config.base_res) and config.max_res < config.base_res:
        problems.append(f"{MODEL_FLAGS}max-res {config.max_res}: must be >= {MODEL_FLAGS}base-res {config.base_res}")
    samples, iterations = config.num_proposal_samples_per_ray, config.num_proposal_iterations
    if len(samples) != iterations:
        problems.append(
            f"{MODEL_FLAGS}num-proposal-samples-per-ray {_format(samples)}: must give one number per proposal "
            f"network ({MODEL_FLAGS}num-proposal-iterations {iterations})"
        )
    schedule = config.schedule
    steps = (schedule.reconstruction_steps, schedule.frozen_steps, schedule.joint_steps)
    if all(_number(v) and v >= 0 for v in steps) and sum(steps) < 1:
        problems.append(f"{MODEL_FLAGS}schedule.*-steps: all three phases have 0 steps; give at least one")
    return problems


def raise_if_any(problems: List[str]) -> None:
    """One :class:`ConfigError` listing every problem, on one line."""
    if problems:
        raise ConfigError("; ".join(problems) + ". Fix " + ("these options" if len(problems) > 1 else "it") + " and rerun.")


def check_pipeline_config(config: "Ovs3dPipelineConfig") -> None:
    """Every ovs3d option of a pipeline: datamanager, dataparser, model and schedule."""
    raise_if_any(datamanager_problems(config.datamanager) + model_problems(config.model))
