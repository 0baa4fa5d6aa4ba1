"""The tiny ``ns-train ovs3d`` run shared by the end-to-end, viewer and export tests.

Trains through the real CLI with the built-in open_clip and DINO teachers on tiny
random-weight architectures, every phase of the schedule, and a tiny field on CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

from ovs3d_nerfstudio.data.procedural import tiny_scene_spec, write_scene

ASSETS = Path(__file__).parent / "assets"
# Checkpoints are saved after steps 3, 6 and 9: the first and last step of the frozen phase
# (3..6) and the last joint step, so each phase's effect on each parameter group is visible.
RECONSTRUCTION, FROZEN, JOINT, SAVE_EVERY = 3, 4, 3, 3
STEPS = RECONSTRUCTION + FROZEN + JOINT


def tiny_train_args(scene: Path, output_dir: Path, cache_dir: Path) -> list:
    """The tiny settings: all phases of the schedule, a small field, few rays and samples."""
    model = "--pipeline.model."
    data = "--pipeline.datamanager."
    return [
        "ovs3d",
        "--machine.device-type", "cpu",
        "--vis", "tensorboard",
        "--output-dir", str(output_dir),
        "--experiment-name", "tiny",
        "--timestamp", "run",
        "--max-num-iterations", str(STEPS),
        "--steps-per-save", str(SAVE_EVERY),
        "--save-only-latest-checkpoint", "False",
        "--steps-per-eval-batch", "1000",
        "--steps-per-eval-image", "1000",
        "--steps-per-eval-all-images", "1000",
        "--mixed-precision", "False",
        f"{model}implementation", "torch",
        f"{model}schedule.reconstruction-steps", str(RECONSTRUCTION),
        f"{model}schedule.frozen-steps", str(FROZEN),
        f"{model}schedule.joint-steps", str(JOINT),
        f"{model}num-levels", "4",
        f"{model}max-res", "64",
        f"{model}log2-hashmap-size", "12",
        f"{model}selection-num-levels", "2",
        f"{model}selection-max-res", "32",
        f"{model}selection-log2-hashmap-size", "10",
        f"{model}hidden-dim", "16",
        f"{model}hidden-dim-color", "16",
        f"{model}appearance-dim", "8",
        f"{model}appearance-embedding-dim", "4",
        f"{model}num-proposal-samples-per-ray", "16", "8",
        f"{model}num-nerf-samples-per-ray", "8",
        f"{model}eval-num-rays-per-chunk", "1024",
        f"{data}train-num-rays-per-batch", "64",
        f"{data}ray-downscale", "2",
        f"{data}pyramid.patch-fractions", "0.5", "0.34", "0.25",
        f"{data}clip.model-name", "ovs3d-tiny-clip",
        f"{data}clip.model-config-path", str(ASSETS / "ovs3d-tiny-clip.json"),
        f"{data}clip.pretrained", "random",
        f"{data}cache-dir", str(cache_dir),
        f"{data}dino.pretrained", "random",
        f"{data}dino.depth", "1",
        f"{data}dino.embed-dim", "32",
        f"{data}dino.num-heads", "2",
        f"{data}num-patches", "2",
        f"{data}patch-tokens", "2",
        f"{data}patch-downscale", "2",
        f"{data}patch-rays-per-token", "2",
        "ovs3d-data",
        "--data", str(scene),
    ]  # fmt: skip


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
