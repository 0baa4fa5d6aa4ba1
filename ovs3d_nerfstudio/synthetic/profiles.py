"""The synthetic benchmark's training profiles, as data, and the configs they give.

The demo trains with a profile; the benchmark lab (``benchmarks/lab``) trains every row of its
table with one. Here:

* :class:`Profile` — the settings of a run as data (dotted ``TrainerConfig`` paths -> values),
  so every number is written down once, printed in the results, and turned into the
  equivalent ``ns-train`` flags by :func:`cli_flags`.
* :func:`build_config` — a ``TrainerConfig`` from the registered ``ovs3d`` (or ``ovs3d-splat``)
  method spec plus overrides: a profile trains the same configuration ``ns-train ovs3d`` (or
  ``ns-train ovs3d-splat``) would.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from nerfstudio.plugins.types import MethodSpecification

from ovs3d_nerfstudio.config import Ovs3dTrainerConfig, ovs3d_method
from ovs3d_nerfstudio.splat.config import ovs3d_splat_method

SYNTHETIC_CLIP = "ovs3d_nerfstudio.synthetic.teachers:synthetic_clip"
SYNTHETIC_DINO = "ovs3d_nerfstudio.synthetic.teachers:synthetic_dino"

NEVER = 10**9
"""Step interval that never comes: no in-training evaluation, no intermediate checkpoint."""


@dataclass(frozen=True)
class Profile:
    """Everything a benchmark run fixes besides the scene and the method.

    ``overrides`` are dotted attribute paths of ``TrainerConfig`` and their values, applied to
    the registered ``ovs3d`` method config; ``splat_overrides`` the same for ``ovs3d-splat``
    (a separate set: the two models share the data options, not the model options);
    :func:`cli_flags` prints them as ``ns-train`` flags.
    """

    name: str
    description: str
    width: int
    """Written image width in pixels (the dataset's full resolution)."""
    height: int
    """Written image height in pixels."""
    overrides: Mapping[str, Any]
    num_views: int = 24
    """Views per scene (3D-OVS: 20-30)."""
    torch_threads: Optional[int] = None
    """torch intra-op threads for the whole run (None: torch's default)."""
    curve_every: int = 100
    """Segmentation steps between two points of each row's learning curve."""
    splat_overrides: Mapping[str, Any] = field(default_factory=dict)
    """Dotted ``TrainerConfig`` paths and values for ``ovs3d-splat`` (empty: the profile has no
    splat settings and the benchmark's splat rows refuse to run with it)."""

    def steps(self, method: str = "ovs3d") -> Tuple[int, int, int]:
        """(reconstruction, frozen, joint) steps of ``method`` after the overrides."""
        schedule = build_config(self, {}, Path("."), Path("."), "steps", method).pipeline.model.schedule
        return schedule.reconstruction_steps, schedule.frozen_steps, schedule.joint_steps

    def method_overrides(self, method: str) -> Mapping[str, Any]:
        """The profile's settings for the registered ``method``."""
        if method not in METHOD_SPECS:
            raise ValueError(f"unknown method '{method}'; choose from {sorted(METHOD_SPECS)}")
        if method != SPLAT_METHOD:
            return self.overrides
        if not self.splat_overrides:
            raise ValueError(f"profile '{self.name}' has no {SPLAT_METHOD} settings (Profile.splat_overrides)")
        return self.splat_overrides


_SYNTHETIC_TEACHERS: Dict[str, Any] = {
    "pipeline.datamanager.clip.source": SYNTHETIC_CLIP,
    "pipeline.datamanager.dino.source": SYNTHETIC_DINO,
    # Crops per encoder call only (each crop is embedded from its own pixels alone).
    "pipeline.datamanager.clip.batch_size": 256,
}

SPLAT_METHOD = "ovs3d-splat"
METHOD_SPECS: Dict[str, MethodSpecification] = {"ovs3d": ovs3d_method, SPLAT_METHOD: ovs3d_splat_method}
"""The registered methods a profile can configure."""

_PAPER_FROZEN_STEPS, _PAPER_JOINT_STEPS = 5000, 10000
_CPU_STEPS = (600, 400, 1200)
"""CPU profile (reconstruction, frozen, joint) steps: the required rows of a scene in under an hour on
2 cores, with learning curves that have flattened (docs/benchmarks.md). The joint phase, where the
appearance volume learns the CLIP features' class part, was 800 steps until living_room's
``distill_only`` curve was found still rising at its end."""
_CPU_SPLAT_STEPS = (300, 200, 400)
"""CPU profile steps of ``ovs3d-splat``: half the NeRF rows' (the torch rasterizer's whole-view
steps cost 0.3-0.7 s each on 2 cores), so that both splat rows add about 10 minutes to a scene
(docs/splat.md measured 0.677 mIoU for the full method on fruit_lawn at these settings)."""

_CPU_MACHINE: Dict[str, Any] = {"machine.device_type": "cpu", "mixed_precision": False}
_CPU_DATA: Dict[str, Any] = {
    "pipeline.datamanager.train_num_rays_per_batch": 512,
    "pipeline.datamanager.ray_downscale": 2,
    "pipeline.datamanager.num_patches": 4,
    "pipeline.datamanager.patch_tokens": 8,
    "pipeline.datamanager.patch_downscale": 1,
    "pipeline.datamanager.patch_rays_per_token": 1,
}
"""CPU profile data settings shared by ``ovs3d`` and ``ovs3d-splat`` (for the splat model:
supervised pixels per step of the 80x60 view it renders, and FDA patches as cameras)."""
_GPU_DATA: Dict[str, Any] = {
    "pipeline.datamanager.ray_downscale": 2,
    # 1008x756 is already close to the paper's 806x604 patch images (4032x3024 / 5).
    "pipeline.datamanager.patch_downscale": 1,
    # The official code average-pools each 8x8 block of patch *rays* into one ray per token.
    "pipeline.datamanager.patch_rays_per_token": 1,
}
"""GPU profile data settings shared by ``ovs3d`` and ``ovs3d-splat``."""

PROFILES: Dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        description=(
            "2 CPU cores, < 60 min per scene for the two baselines and the five required trained rows: "
            "160x120 images, 80x60 rays (ray_downscale 2), a small torch field, 512 rays and (32, 16) + 16 "
            "samples per ray, 4 FDA patches of 8x8 tokens (64 px, 1 ray per token), 600 + 400 + 1200 steps "
            "(a joint phase long enough for plain distillation's curve to flatten; the paper's is 5k + 10k). "
            "MLP learning rates of the segmentation phases are the paper's x (paper steps / profile steps), "
            "so that the CLIP head can move as far as in the paper's 15k steps; volume learning rates are "
            "the paper's. One torch thread. "
            "ovs3d-splat: the same data settings, 10,000 initial Gaussians (densified every 50 steps from "
            "step 100 to 250), 300 + 200 + 400 steps with the MLP rates scaled the same way, whole views "
            "rendered by the torch rasterizer."
        ),
        width=160,
        height=120,
        torch_threads=1,
        overrides={
            **_SYNTHETIC_TEACHERS,
            **_CPU_MACHINE,
            "pipeline.model.implementation": "torch",
            "pipeline.model.schedule.reconstruction_steps": _CPU_STEPS[0],
            "pipeline.model.schedule.frozen_steps": _CPU_STEPS[1],
            "pipeline.model.schedule.joint_steps": _CPU_STEPS[2],
            "pipeline.model.schedule.frozen_lr_mlp": 1e-4 * _PAPER_FROZEN_STEPS / _CPU_STEPS[1],
            "pipeline.model.schedule.joint_lr_mlp": 5e-5 * _PAPER_JOINT_STEPS / _CPU_STEPS[2],
            # nerfacto's proposal warm-up / annealing are 5000 / 1000 of 30k steps: same fractions.
            "pipeline.model.proposal_warmup": _CPU_STEPS[0] // 6,
            "pipeline.model.proposal_weights_anneal_max_num_iters": _CPU_STEPS[0] // 30,
            "pipeline.model.num_levels": 8,
            "pipeline.model.max_res": 256,
            "pipeline.model.log2_hashmap_size": 15,
            "pipeline.model.hidden_dim": 32,
            "pipeline.model.hidden_dim_color": 32,
            "pipeline.model.selection_num_levels": 4,
            "pipeline.model.selection_max_res": 64,
            "pipeline.model.selection_log2_hashmap_size": 13,
            "pipeline.model.num_proposal_samples_per_ray": (32, 16),
            "pipeline.model.num_nerf_samples_per_ray": 16,
            "pipeline.model.proposal_net_args_list.0.log2_hashmap_size": 14,
            "pipeline.model.proposal_net_args_list.0.max_res": 64,
            "pipeline.model.proposal_net_args_list.1.log2_hashmap_size": 14,
            "pipeline.model.proposal_net_args_list.1.max_res": 128,
            "pipeline.model.eval_num_rays_per_chunk": 4096,
            **_CPU_DATA,
        },
        splat_overrides={
            **_SYNTHETIC_TEACHERS,
            **_CPU_MACHINE,
            "pipeline.model.schedule.reconstruction_steps": _CPU_SPLAT_STEPS[0],
            "pipeline.model.schedule.frozen_steps": _CPU_SPLAT_STEPS[1],
            "pipeline.model.schedule.joint_steps": _CPU_SPLAT_STEPS[2],
            "pipeline.model.schedule.frozen_lr_mlp": 1e-4 * _PAPER_FROZEN_STEPS / _CPU_SPLAT_STEPS[1],
            "pipeline.model.schedule.joint_lr_mlp": 5e-5 * _PAPER_JOINT_STEPS / _CPU_SPLAT_STEPS[2],
            "pipeline.model.num_random": 10000,
            # Densify within the short reconstruction, at full resolution from the start.
            "pipeline.model.num_downscales": 0,
            "pipeline.model.warmup_length": 100,
            "pipeline.model.refine_every": 50,
            "pipeline.model.stop_split_at": 250,
            **_CPU_DATA,
        },
    ),
    "gpu": Profile(
        name="gpu",
        description=(
            "The paper's settings on one GPU: 1008x756 images, 504x378 rays (ray_downscale 2: the "
            "paper's ray resolution, 4032x3024 photos at 1/8), 4096 rays, 8 FDA patches of 32x32 tokens "
            "(256 px) with one rendered ray per token as in the official code, 30k + 5k + 10k steps, the "
            "paper's learning rates, the default (full-size) field with tiny-cuda-nn when installed. "
            "ovs3d-splat: the same data settings and the method's defaults (50,000 initial Gaussians, "
            "splatfacto's densification and 30k reconstruction steps, then 5k + 10k), gsplat on CUDA."
        ),
        width=1008,
        height=756,
        overrides={**_SYNTHETIC_TEACHERS, "machine.device_type": "cuda", **_GPU_DATA},
        splat_overrides={**_SYNTHETIC_TEACHERS, "machine.device_type": "cuda", **_GPU_DATA},
    ),
}

def _child(target: Any, name: str) -> Any:
    if isinstance(target, list):
        return target[int(name)]
    if isinstance(target, dict):
        return target[name]
    return getattr(target, name)


def set_path(config: Any, path: str, value: Any) -> None:
    """Sets a dotted path (attributes, list indices, dict keys, as tyro names them); an unknown
    name raises instead of creating a new attribute."""
    *parents, name = path.split(".")
    target = config
    for parent in parents:
        target = _child(target, parent)
    if isinstance(target, list):
        target[int(name)] = copy.deepcopy(value)
    elif isinstance(target, dict):
        if name not in target:
            raise KeyError(f"no option '{name}' (from '{path}')")
        target[name] = copy.deepcopy(value)
    elif hasattr(target, name):
        setattr(target, name, copy.deepcopy(value))
    else:
        raise AttributeError(f"{type(target).__name__} has no option '{name}' (from '{path}')")


def cli_flags(overrides: Mapping[str, Any]) -> List[str]:
    """``ns-train`` flags equivalent to ``overrides`` (tyro's spelling: dashes; tuples spread out)."""
    flags: List[str] = []
    for path, value in overrides.items():
        flag = "--" + path.replace("_", "-")
        flags += [flag, *(str(v) for v in value)] if isinstance(value, (tuple, list)) else [flag, str(value)]
    return flags


def build_config(
    profile: Profile,
    method_overrides: Mapping[str, Any],
    scene: Path,
    workdir: Path,
    run_name: str,
    method: str = "ovs3d",
) -> Ovs3dTrainerConfig:
    """The registered ``method``'s TrainerConfig (``ovs3d`` or ``ovs3d-splat``) with the
    profile's settings for it and the row's overrides.

    Training runs in this process without a viewer (``vis tensorboard``: the event files hold
    the loss curves) and without in-training evaluation; features are cached under
    ``workdir/cache`` so that all rows share one extraction per pyramid setting.
    """
    profile_overrides = profile.method_overrides(method)
    config: Ovs3dTrainerConfig = copy.deepcopy(METHOD_SPECS[method].config)
    for path, value in {**profile_overrides, **method_overrides}.items():
        set_path(config, path, value)
    schedule = config.pipeline.model.schedule
    config.max_num_iterations = schedule.total_steps
    config.pipeline.datamanager.dataparser.data = Path(scene)
    config.pipeline.datamanager.cache_dir = Path(workdir) / "cache"
    config.output_dir = Path(workdir) / "runs"
    config.experiment_name = run_name
    config.timestamp = "run"
    config.vis = "tensorboard"
    config.steps_per_eval_batch = NEVER
    config.steps_per_eval_image = NEVER
    config.steps_per_eval_all_images = NEVER
    config.steps_per_save = NEVER
    return config
