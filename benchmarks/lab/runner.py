"""The benchmark runner: one scene, a profile, the requested rows; results as JSON and a table.

Trained rows share one reconstruction stage (``benchmarks/lab/training.py``); each row is
otherwise the run ``ns-train ovs3d <profile flags> <method flags>`` would do from that step on.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ovs3d_nerfstudio.synthetic.profiles import Profile, build_config, cli_flags
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene
from ovs3d_nerfstudio.training import evaluate

from benchmarks.lab.diagnostics import diagnose
from benchmarks.lab.evaluation import baseline_2d
from benchmarks.lab.methods import BASELINE_RDA, BASELINES, METHODS, ROWS
from benchmarks.lab.reports import as_json, code_version, format_table, load_average, machine_description, write_results
from benchmarks.lab.training import final_checkpoint, record_curve, train


def method_command(profile: Profile, method: str, scene: Path) -> str:
    """The ``ns-train`` command a user would run for one trained row (whole schedule)."""
    flags = cli_flags({**profile.overrides, **METHODS[method]})
    return " ".join(["ns-train", "ovs3d", *flags, "ovs3d-data", "--data", str(scene)])


def run_benchmark(
    scene_name: str,
    profile: Profile,
    rows: Sequence[str],
    workdir: Path,
    seed: int = 0,
    out: Optional[Path] = None,
    echo: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Writes the scene, scores the requested rows and returns (and writes to ``out``) the results.

    Trained rows share one reconstruction stage (module docstring); the JSON is rewritten
    after every row, so an interrupted run keeps what it finished.
    """
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if profile.torch_threads is not None:
        torch.set_num_threads(profile.torch_threads)
    workdir = Path(workdir)
    started = time.perf_counter()
    result: Dict[str, Any] = {
        "scene": scene_name,
        "seed": seed,
        "profile": as_json(profile),
        "machine": machine_description(profile.overrides.get("machine.device_type", "cuda")),
        "code": code_version(),
        "load_average_start": load_average(),
        "rows": {},
        "commands": {},
        "timings": {},
    }

    def save() -> None:
        if out is not None:
            write_results(result, Path(out))

    clock = time.perf_counter()
    scene = write_benchmark_scene(scene_name, workdir / "scene", seed, profile.width, profile.height, profile.num_views)
    result["timings"]["write_scene_seconds"] = time.perf_counter() - clock
    base = build_config(profile, {}, scene, workdir, "reconstruction")
    result["labels"] = list(base.pipeline.datamanager.dataparser.setup().get_dataparser_outputs("train").metadata["labels"])

    for name in BASELINES:
        if name in rows:
            echo(f"[{scene_name}/{profile.name}] {name}")
            result["rows"][name] = baseline_2d(base, normalized_relevancy=name == BASELINE_RDA)
            result["commands"][name] = f"benchmarks.lab.evaluation.baseline_2d (no training, {name})"
            save()

    trained = [row for row in ROWS if row in rows and row not in BASELINES]
    reconstruction_steps, frozen_steps, joint_steps = profile.steps()
    checkpoint: Optional[Path] = None
    if trained and reconstruction_steps > 0:
        echo(f"[{scene_name}/{profile.name}] reconstruction stage ({reconstruction_steps} steps, shared by every row)")
        base.max_num_iterations = reconstruction_steps
        run = train(base)
        checkpoint = final_checkpoint(run.trainer)
        result["reconstruction"] = {
            "setup_seconds": run.setup_seconds,
            "train_seconds": run.train_seconds,
            "loss_curve": run.log.loss_curve(max(1, reconstruction_steps // 20)),
            "checkpoint": str(checkpoint),
        }
        del run
        gc.collect()
        save()

    for name in trained:
        echo(f"[{scene_name}/{profile.name}] {name}: segmentation stage ({frozen_steps} + {joint_steps} steps)")
        config = build_config(profile, METHODS[name], scene, workdir, name)
        config.max_num_iterations = frozen_steps + joint_steps  # the steps after the shared reconstruction
        curve: List[Tuple[int, float]] = []
        run = train(config, resume=checkpoint, before_train=lambda trainer: record_curve(trainer, profile.curve_every, curve))
        metrics = evaluate(run.trainer.pipeline)
        start = time.perf_counter()
        diagnostics = diagnose(run.trainer.pipeline.model, run.trainer.pipeline.datamanager)
        result["rows"][name] = {
            **metrics,
            "setup_seconds": run.setup_seconds,
            "train_seconds": run.train_seconds,
            "diagnostics_seconds": time.perf_counter() - start,
            "config": str(config.get_base_dir() / "config.yml"),
            "loss_curve": run.log.loss_curve(max(1, (frozen_steps + joint_steps) // 20)),
            "miou_curve": curve,
            "diagnostics": diagnostics,
        }
        result["commands"][name] = method_command(profile, name, scene)
        del run
        gc.collect()
        save()

    result["timings"]["total_seconds"] = time.perf_counter() - started
    result["load_average_end"] = load_average()
    save()
    echo(format_table(result["rows"]))
    return result
