"""FDA patch rendering: one pooled ray per DINO token (official code, default) vs every pixel.

The official code average-pools each 8x8 block of a patch's rays into one ray per DINO token
and renders 32x32 rays per 256 px patch; rendering every pixel (``patch-rays-per-token 8``)
renders 64 times as many patch rays. This script trains a short ``ns-train ovs3d`` run of a
benchmark profile once per setting, each in a fresh subprocess (so that neither inherits the
other's allocator state or memory high-water mark), alternating the settings ``--repeats``
times, and reports per segmentation phase (the only phases that render patches):

* milliseconds per training step (mean over the phase's steps after the first ``--skip``);
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the peak resident set
  sampled every 10 ms during the phase and its growth over the phase's start (see
  ``benchmarks/perf_training.py``, whose monitor this reuses).

    python benchmarks/patch_rays.py --profile cpu --out benchmarks/results/patch_rays_cpu.json
    python benchmarks/patch_rays.py --profile gpu --steps 20 --out benchmarks/results/patch_rays_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.perf_report import finish_report, run_context  # noqa: E402
from benchmarks.perf_training import PhaseMemory  # noqa: E402
from ovs3d_nerfstudio.schedule import Phase  # noqa: E402
from benchmarks.lab.reports import code_version  # noqa: E402
from benchmarks.lab.training import train  # noqa: E402
from ovs3d_nerfstudio.synthetic.profiles import PROFILES, Profile, build_config  # noqa: E402
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene  # noqa: E402

SETTINGS = (1, 8)
"""Rendered rays per token side: 1 (one ray per token, the default) and 8 (every pixel)."""

SEGMENTATION = (Phase.SEGMENTATION_FROZEN.value, Phase.SEGMENTATION_JOINT.value)


def measure(
    profile: Profile,
    scene: Path,
    workdir: Path,
    rays_per_token: int,
    steps: int,
    skip: int,
    reconstruction_steps: int,
    method: str = "ovs3d",
) -> Dict[str, Any]:
    """One short training run of the registered ``method`` (``ovs3d`` or ``ovs3d-splat``, at the
    profile's settings for it) on ``scene`` with ``rays_per_token`` rays (splat: pixels) per token
    side: ms per step and peak memory of every phase it runs (``PhaseMemory``)."""
    overrides = {
        "pipeline.model.schedule.reconstruction_steps": reconstruction_steps,
        "pipeline.model.schedule.frozen_steps": steps,
        "pipeline.model.schedule.joint_steps": steps,
        "pipeline.datamanager.patch_rays_per_token": rays_per_token,
    }
    run_name = f"patch_rays_{rays_per_token}" if method == "ovs3d" else f"{method}_patch_rays_{rays_per_token}"
    config = build_config(profile, overrides, scene, workdir, run_name, method)
    config.logging.local_writer.enable = False
    datamanager = config.pipeline.datamanager
    patch_rays = datamanager.num_patches * (datamanager.patch_tokens * rays_per_token) ** 2
    monitors: List[PhaseMemory] = []
    run = train(config, before_train=lambda trainer: monitors.append(PhaseMemory(trainer)))
    monitors[0].stop()
    summary = run.log.phase_summary(lambda phase: datamanager.train_num_rays_per_batch + patch_rays, skip=skip)
    return {
        "rays_per_token_side": rays_per_token,
        "patch_rays_per_step": patch_rays,
        "random_rays_per_step": datamanager.train_num_rays_per_batch,
        "setup_seconds": run.setup_seconds,
        "phases": {
            phase: {
                "ms_per_step": 1000.0 * row["seconds_per_iteration"],
                "iterations_per_second": row["iterations_per_second"],
                "timed_steps": row["timed_iterations"],
                "memory": monitors[0].peaks[phase],
            }
            for phase, row in summary.items()
        },
        "torch_threads": torch.get_num_threads(),
    }


def worker(args: argparse.Namespace) -> Dict[str, Any]:
    """One setting in this (fresh) process, on the scene the parent wrote."""
    profile = PROFILES[args.profile]
    if profile.torch_threads is not None:
        torch.set_num_threads(profile.torch_threads)
    return measure(profile, args.workdir / "scene", args.workdir, args.worker, args.steps, args.skip, args.reconstruction_steps)


def run_setting(setting: int, args: argparse.Namespace) -> Dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(setting)]
    for name in ("profile", "steps", "skip", "reconstruction_steps", "workdir"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median over the repeats of one setting, per segmentation phase."""
    phases = {}
    for phase in SEGMENTATION:
        rows = [run["phases"][phase] for run in runs]
        phases[phase] = {
            "ms_per_step": statistics.median(row["ms_per_step"] for row in rows),
            "peak_mib": statistics.median(row["memory"]["peak_mib"] for row in rows),
            "growth_mib": statistics.median(row["memory"].get("growth_mib", 0.0) for row in rows),
        }
    return {"patch_rays_per_step": runs[0]["patch_rays_per_step"], "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--scene", default="fruit_lawn")
    parser.add_argument("--steps", type=int, default=12, help="steps of each segmentation phase")
    parser.add_argument("--skip", type=int, default=2, help="first steps of each phase left out of the timing")
    parser.add_argument("--reconstruction-steps", type=int, default=2, help="patches are only rendered after these")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating the settings")
    parser.add_argument("--workdir", type=Path, default=Path("outputs") / "patch_rays")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", type=int, choices=SETTINGS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return

    profile = PROFILES[args.profile]
    device = profile.overrides.get("machine.device_type", "cuda")
    write_benchmark_scene(args.scene, args.workdir / "scene", 0, profile.width, profile.height, profile.num_views)
    results: Dict[str, Any] = {
        "profile": args.profile,
        "scene": args.scene,
        "steps_per_phase": args.steps,
        "skip": args.skip,
        **run_context(device),
        "code": code_version(),
        "runs": [],
    }
    for repeat in range(args.repeats):
        for setting in SETTINGS:
            print(f"repeat {repeat + 1}/{args.repeats}: {setting} ray(s) per token side ...", flush=True)
            results["runs"].append(run_setting(setting, args))
    results["settings"] = {
        str(setting): summarise([run for run in results["runs"] if run["rays_per_token_side"] == setting])
        for setting in SETTINGS
    }
    one, every = (results["settings"][str(setting)] for setting in SETTINGS)
    results["ratios_every_pixel_over_one_ray"] = {
        phase: {
            "time": every["phases"][phase]["ms_per_step"] / one["phases"][phase]["ms_per_step"],
            "peak_memory": every["phases"][phase]["peak_mib"] / one["phases"][phase]["peak_mib"],
        }
        for phase in SEGMENTATION
    }
    memory = "allocated MiB" if device.startswith("cuda") else "RSS MiB"
    print(f"{'rays/token side':>15} {'patch rays':>10} {'phase':<20} {'ms/step':>9} {'peak ' + memory:>16} {'growth':>8}")
    for setting in SETTINGS:
        row = results["settings"][str(setting)]
        for phase in SEGMENTATION:
            cell = row["phases"][phase]
            print(
                f"{setting:>15} {row['patch_rays_per_step']:>10} {phase:<20} {cell['ms_per_step']:9.1f} "
                f"{cell['peak_mib']:16.0f} {cell['growth_mib']:8.0f}"
            )
    finish_report(results, args.out)


if __name__ == "__main__":
    main()
