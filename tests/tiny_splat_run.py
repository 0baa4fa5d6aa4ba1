"""The tiny ``ns-train ovs3d-splat`` run shared by the splat end-to-end, viewer and export tests.

The NeRF tiny run's scene, teachers and target settings (tests/tiny_run.py), with a few hundred
Gaussians rendered by the torch rasterizer on CPU, densification every other reconstruction
step, and every phase of the schedule.

``tests/conftest.py`` names the method in ``NERFSTUDIO_METHOD_CONFIGS`` while the installed
package lacks its entry point; the commands started here inherit it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

from ovs3d_nerfstudio.data.procedural import write_scene
from tiny_run import TINY_CLIP, TINY_DINO, tiny_schedule
from tiny_scene import tiny_scene_spec

SPLAT_METHOD = "ovs3d-splat"

RECONSTRUCTION, FROZEN, JOINT, SAVE_EVERY = 12, 4, 3, 3
STEPS = RECONSTRUCTION + FROZEN + JOINT
NUM_GAUSSIANS = 400
"""Initial Gaussians, placed along training rays (the LLFF-layout tiny scene has no sparse points)."""

TINY_SPLAT_TRAINING: Dict[str, Any] = {
    "machine.device_type": "cpu",
    "mixed_precision": False,
    "pipeline.model.num_random": NUM_GAUSSIANS,
    "pipeline.model.latent_dim": 8,
    "pipeline.model.clip_head_layers": 2,
    "pipeline.model.clip_head_width": 16,
    "pipeline.model.num_downscales": 0,
    # Densify within reconstruction: gsplat's strategy pauses refinement for the first
    # (training views + refine_every) = 8 + 2 steps, so it refines first at step 10.
    "pipeline.model.warmup_length": 0,
    "pipeline.model.refine_every": 2,
    "pipeline.model.densify_grad_thresh": 1e-9,
    "pipeline.datamanager.ray_downscale": 2,
    "pipeline.datamanager.train_num_rays_per_batch": 64,
}
"""Dotted ``TrainerConfig`` paths of the tiny splat settings on CPU."""


def tiny_splat_train_args(scene: Path, output_dir: Path, cache_dir: Path) -> list:
    """``ns-train`` arguments of the tiny splat run."""
    from ovs3d_nerfstudio.synthetic.profiles import cli_flags

    data = "pipeline.datamanager."
    options = {
        "vis": "tensorboard",
        "output_dir": output_dir,
        "experiment_name": "tiny",
        "timestamp": "run",
        "max_num_iterations": STEPS,
        "steps_per_save": SAVE_EVERY,
        "save_only_latest_checkpoint": False,
        "steps_per_eval_batch": 0,
        "steps_per_eval_image": 1000,
        "steps_per_eval_all_images": 1000,
        **TINY_SPLAT_TRAINING,
        **tiny_schedule(RECONSTRUCTION, FROZEN, JOINT),
        f"{data}pyramid.patch_fractions": (0.5, 0.34, 0.25),
        **{f"{data}clip.{name}": value for name, value in TINY_CLIP.items()},
        f"{data}cache_dir": cache_dir,
        **{f"{data}dino.{name}": value for name, value in TINY_DINO.items()},
        f"{data}num_patches": 2,
        f"{data}patch_tokens": 2,
        f"{data}patch_downscale": 2,
        f"{data}patch_rays_per_token": 2,
    }
    return [SPLAT_METHOD, *cli_flags(options), "ovs3d-data", "--data", str(scene)]


def run_splat_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def ns_command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def train_tiny_splat_run(root: Path) -> Tuple[Path, str]:
    """Generates the tiny scene under ``root`` and trains the splat variant; returns (run folder, stdout)."""
    scene = write_scene(tiny_scene_spec(seed=0), root / "scene", mask_views=[0, 4])
    result = run_splat_cli([ns_command("ns-train"), *tiny_splat_train_args(scene, root / "outputs", root / "cache")], root)
    return root / "outputs" / "tiny" / SPLAT_METHOD / "run", result.stdout
