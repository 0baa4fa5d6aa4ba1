"""The tiny ``ns-train ovs3d-splat`` run shared by the splat end-to-end, viewer and export tests.

The NeRF tiny run's scene, teachers and target settings (tests/tiny_run.py), with a few hundred
Gaussians rendered by the torch rasterizer on CPU, densification every other reconstruction
step, and every phase of the schedule.

``tests/conftest.py`` names the method in ``NERFSTUDIO_METHOD_CONFIGS`` while the installed
package lacks its entry point; the commands started here inherit it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Tuple

from ovs3d_nerfstudio.data.procedural import write_scene
from tiny_run import run_cli, tiny_schedule, tiny_target_options
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
    "pipeline.model.densify_grad_thresh_plain": 1e-9,  # CPU: plain screen-space gradients
    "pipeline.datamanager.ray_downscale": 2,
    "pipeline.datamanager.train_num_rays_per_batch": 64,
}
"""Dotted ``TrainerConfig`` paths of the tiny splat settings on CPU."""


def tiny_splat_train_args(scene: Path, output_dir: Path, cache_dir: Path) -> list:
    """``ns-train`` arguments of the tiny splat run."""
    from ovs3d_nerfstudio.synthetic.profiles import cli_flags

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
        **tiny_target_options(cache_dir),
    }
    return [SPLAT_METHOD, *cli_flags(options), "ovs3d-data", "--data", str(scene)]


def ns_command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def train_tiny_splat_run(root: Path) -> Tuple[Path, str]:
    """Generates the tiny scene under ``root`` and trains the splat variant; returns (run folder, stdout)."""
    scene = write_scene(tiny_scene_spec(seed=0), root / "scene", mask_views=[0, 4])
    result = run_cli([ns_command("ns-train"), *tiny_splat_train_args(scene, root / "outputs", root / "cache")], root)
    return root / "outputs" / "tiny" / SPLAT_METHOD / "run", result.stdout
