"""The tiny ``ns-train ovs3d`` run shared by the end-to-end, viewer and export tests.

Trains through the real CLI with the built-in open_clip and DINO teachers on tiny
random-weight architectures, every phase of the schedule, and a tiny field on CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

from ovs3d_nerfstudio.data.procedural import write_scene
from tiny_scene import tiny_scene_spec

ASSETS = Path(__file__).parent / "assets"
TINY_CLIP_JSON = ASSETS / "ovs3d-tiny-clip.json"
"""A 1-layer open_clip architecture (32 px images, 8 px patches, 16-d embeddings, real tokenizer)."""

TINY_CLIP: Dict[str, Any] = {"model_name": TINY_CLIP_JSON.stem, "pretrained": "random", "model_config_path": TINY_CLIP_JSON}
"""``ClipTeacherConfig`` fields of the tiny random-weight CLIP teacher."""
TINY_DINO: Dict[str, Any] = {"pretrained": "random", "depth": 1, "embed_dim": 32, "num_heads": 2}
"""``DinoTeacherConfig`` fields of the tiny random-weight DINO teacher (stride 8)."""

FEW_RAYS: Dict[str, Any] = {
    "pipeline.model.num_proposal_samples_per_ray": (16, 8),
    "pipeline.model.num_nerf_samples_per_ray": 8,
    "pipeline.datamanager.train_num_rays_per_batch": 64,
}
"""Dotted ``TrainerConfig`` paths: 64 rays per step, 16 + 8 proposal and 8 field samples per ray."""

TINY_TRAINING: Dict[str, Any] = {
    "machine.device_type": "cpu",
    "mixed_precision": False,
    "pipeline.model.implementation": "torch",
    "pipeline.model.num_levels": 4,
    "pipeline.model.max_res": 64,
    "pipeline.model.log2_hashmap_size": 12,
    "pipeline.model.selection_num_levels": 2,
    "pipeline.model.selection_max_res": 32,
    "pipeline.model.selection_log2_hashmap_size": 10,
    "pipeline.model.hidden_dim": 16,
    "pipeline.model.hidden_dim_color": 16,
    "pipeline.model.appearance_dim": 8,
    "pipeline.model.appearance_embedding_dim": 4,
    "pipeline.model.eval_num_rays_per_chunk": 1024,
    "pipeline.datamanager.ray_downscale": 2,
    **FEW_RAYS,
}
"""Dotted ``TrainerConfig`` paths of the tiny training settings on CPU: a small torch field,
few rays and samples (``FEW_RAYS``), rays at half the image size."""


def random_rays(count: int, seed: int = 1):
    """``count`` rays from the origin in random directions, for model tests without a datamanager."""
    import torch
    import torch.nn.functional as F
    from nerfstudio.cameras.rays import RayBundle

    generator = torch.Generator().manual_seed(seed)
    return RayBundle(
        origins=torch.zeros(count, 3),
        directions=F.normalize(torch.randn(count, 3, generator=generator), dim=-1),
        pixel_area=torch.full((count, 1), 1e-4),
        camera_indices=torch.randint(0, 4, (count, 1), generator=generator),
    )


def below(prefix: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The settings under ``prefix`` (e.g. ``pipeline.model.``), named relative to it: the
    keyword arguments of the config found there."""
    return {path[len(prefix) :]: value for path, value in settings.items() if path.startswith(prefix)}


def tiny_schedule(reconstruction: int, frozen: int, joint: int) -> Dict[str, int]:
    """The three phases' step counts as dotted ``TrainerConfig`` paths."""
    prefix = "pipeline.model.schedule."
    return {f"{prefix}reconstruction_steps": reconstruction, f"{prefix}frozen_steps": frozen, f"{prefix}joint_steps": joint}


# Checkpoints are saved after steps 3, 6 and 9: the first and last step of the frozen phase
# (3..6) and the last joint step, so each phase's effect on each parameter group is visible.
RECONSTRUCTION, FROZEN, JOINT, SAVE_EVERY = 3, 4, 3, 3
STEPS = RECONSTRUCTION + FROZEN + JOINT


def tiny_target_options(cache_dir: Path) -> Dict[str, Any]:
    """Dotted ``TrainerConfig`` paths of the tiny runs' targets (both methods): the built-in teachers
    on tiny architectures, three window scales, the feature cache and two 2x2-token FDA patches."""
    data = "pipeline.datamanager."
    return {
        f"{data}pyramid.patch_fractions": (0.5, 0.34, 0.25),
        **{f"{data}clip.{name}": value for name, value in TINY_CLIP.items()},
        f"{data}cache_dir": cache_dir,
        **{f"{data}dino.{name}": value for name, value in TINY_DINO.items()},
        f"{data}num_patches": 2,
        f"{data}patch_tokens": 2,
        f"{data}patch_downscale": 2,
        f"{data}patch_rays_per_token": 2,
    }


def tiny_train_args(scene: Path, output_dir: Path, cache_dir: Path) -> list:
    """``ns-train`` arguments of the tiny run: all phases of the schedule with the built-in
    teachers on tiny architectures, ``TINY_TRAINING`` and two 2x2-token FDA patches."""
    from ovs3d_nerfstudio.synthetic.profiles import cli_flags

    options = {
        "vis": "tensorboard",
        "output_dir": output_dir,
        "experiment_name": "tiny",
        "timestamp": "run",
        "max_num_iterations": STEPS,
        "steps_per_save": SAVE_EVERY,
        "save_only_latest_checkpoint": False,
        "steps_per_eval_batch": 1000,
        "steps_per_eval_image": 1000,
        "steps_per_eval_all_images": 1000,
        **TINY_TRAINING,
        **tiny_schedule(RECONSTRUCTION, FROZEN, JOINT),
        **tiny_target_options(cache_dir),
    }
    return ["ovs3d", *cli_flags(options), "ovs3d-data", "--data", str(scene)]


def run_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def train_tiny_run(root: Path) -> Tuple[Path, str]:
    """Generates the tiny scene under ``root`` and trains it; returns (run folder, stdout)."""
    scene = write_scene(tiny_scene_spec(seed=0), root / "scene", mask_views=[0, 4])
    ns_train = Path(sys.executable).with_name("ns-train")
    result = run_cli([str(ns_train), *tiny_train_args(scene, root / "outputs", root / "cache")], cwd=root)
    return root / "outputs" / "tiny" / "ovs3d" / "run", result.stdout
