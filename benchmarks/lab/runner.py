"""The benchmark runner: one scene, a profile, the requested rows; results as JSON and a table.

Trained rows of one registered method share one reconstruction stage
(``benchmarks/lab/training.py``): the ``ovs3d`` rows one NeRF reconstruction, the ``ovs3d-splat``
rows one Gaussian reconstruction. Each row is otherwise the run ``ns-train <method> <profile
flags> <row flags>`` would do from that step on.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ovs3d_nerfstudio.synthetic.profiles import SPLAT_METHOD, Profile, build_config, cli_flags
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene
from ovs3d_nerfstudio.training import evaluate

from benchmarks.lab.diagnostics import diagnose, ray_resolution_miou, splat_ray_resolution_miou
from benchmarks.lab.evaluation import baseline_2d
from benchmarks.lab.methods import BASELINE_RDA, BASELINES, ROWS, VARIANT_METHODS, registered_method
from benchmarks.lab.reports import as_json, code_version, format_table, load_average, machine_description, write_results
from benchmarks.lab.training import PeakMemory, TrainedRun, final_checkpoint, record_curve, train

SPLAT_DIAGNOSTICS_SKIPPED = (
    "not computed for ovs3d-splat rows: the diagnostics render rays through the NeRF field "
    "(benchmarks/lab/diagnostics.py)"
)


def method_command(profile: Profile, method: str, scene: Path) -> str:
    """The ``ns-train`` command a user would run for one trained row (whole schedule)."""
    registered = registered_method(method)
    flags = cli_flags({**profile.method_overrides(registered), **VARIANT_METHODS[registered][method]})
    return " ".join(["ns-train", registered, *flags, "ovs3d-data", "--data", str(scene)])


def _splat_measurements(run: TrainedRun, memory: PeakMemory) -> Dict[str, Any]:
    """What a splat stage records besides the NeRF rows' fields: seconds per step of each phase,
    peak memory since the stage started (setup, training and, for a row, evaluation) and the
    number of Gaussians (the reconstruction's densification sets it; segmentation keeps it)."""
    return {
        "phases": run.log.phase_summary(),
        "peak_memory": memory.read(),
        "gaussians": int(run.trainer.pipeline.model.num_points),
    }


def _train_rows(
    method: str,
    trained: Sequence[str],
    profile: Profile,
    scene: Path,
    workdir: Path,
    result: Dict[str, Any],
    save: Callable[[], None],
    echo: Callable[[str], None],
    reuse_reconstruction: bool = False,
) -> None:
    """Trains ``method``'s reconstruction stage once, then each row's segmentation stage from it,
    and adds the results to ``result`` (the NeRF reconstruction under ``reconstruction``, the
    splat one under ``splat_reconstruction``). With ``reuse_reconstruction``, a reconstruction
    checkpoint that ``result`` already records (a resumed results file) is used instead."""
    splat = method == SPLAT_METHOD
    stage = "splat_reconstruction" if splat else "reconstruction"
    reconstruction_steps, frozen_steps, joint_steps = profile.steps(method)
    config = build_config(profile, {}, scene, workdir, stage, method)
    device = config.machine.device_type
    checkpoint: Optional[Path] = None
    recorded = result.get(stage, {}).get("checkpoint") if reuse_reconstruction else None
    if recorded is not None and Path(recorded).is_file():
        checkpoint = Path(recorded)
        echo(f"{method} reconstruction stage: reusing {checkpoint}")
    elif reconstruction_steps > 0:
        if recorded is not None:
            echo(f"{method} reconstruction stage: the recorded {recorded} is gone, training it again")
        echo(f"{method} reconstruction stage ({reconstruction_steps} steps, shared by its rows)")
        config.max_num_iterations = reconstruction_steps
        memory = PeakMemory(device)
        run = train(config)
        checkpoint = final_checkpoint(run.trainer)
        result[stage] = {
            "setup_seconds": run.setup_seconds,
            "train_seconds": run.train_seconds,
            "loss_curve": run.log.loss_curve(max(1, reconstruction_steps // 20)),
            "checkpoint": str(checkpoint),
            **(_splat_measurements(run, memory) if splat else {}),
        }
        del run
        gc.collect()
        save()

    for name in trained:
        echo(f"{name}: segmentation stage ({frozen_steps} + {joint_steps} steps)")
        config = build_config(profile, VARIANT_METHODS[method][name], scene, workdir, name, method)
        config.max_num_iterations = frozen_steps + joint_steps  # the steps after the shared reconstruction
        curve: List[Tuple[int, float]] = []
        score = splat_ray_resolution_miou if splat else ray_resolution_miou
        memory = PeakMemory(device)
        run = train(config, resume=checkpoint, before_train=lambda trainer: record_curve(trainer, profile.curve_every, curve, score))
        metrics = evaluate(run.trainer.pipeline)
        timing: Dict[str, float] = {}
        if splat:
            diagnostics = None
            measured = {"diagnostics_skipped": SPLAT_DIAGNOSTICS_SKIPPED, **_splat_measurements(run, memory)}
        else:
            start = time.perf_counter()
            diagnostics = diagnose(run.trainer.pipeline.model, run.trainer.pipeline.datamanager)
            timing["diagnostics_seconds"] = time.perf_counter() - start
            measured = {}
        result["rows"][name] = {
            **metrics,
            "setup_seconds": run.setup_seconds,
            "train_seconds": run.train_seconds,
            **timing,
            "config": str(config.get_base_dir() / "config.yml"),
            "loss_curve": run.log.loss_curve(max(1, (frozen_steps + joint_steps) // 20)),
            "miou_curve": curve,
            "diagnostics": diagnostics,
            **measured,
        }
        result["commands"][name] = method_command(profile, name, scene)
        del run
        gc.collect()
        save()


def run_benchmark(
    scene_name: str,
    profile: Profile,
    rows: Sequence[str],
    workdir: Path,
    seed: int = 0,
    out: Optional[Path] = None,
    echo: Callable[[str], None] = print,
    resume: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Writes the scene, scores the requested rows and returns (and writes to ``out``) the results.

    Trained rows of one method share one reconstruction stage (module docstring); the JSON is rewritten
    after every row, so an interrupted run keeps what it finished. ``resume``, an earlier result of
    the same scene, seed and profile, is extended instead: the requested rows are (re)scored into
    it and its recorded reconstruction checkpoints are reused, so added rows train from the same
    reconstruction as the rows already there.
    """
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(ROWS)}")
    for method in dict.fromkeys(registered_method(row) for row in rows if row not in BASELINES):
        profile.method_overrides(method)  # a profile without settings for a row's method fails before any training
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
    if resume is not None:
        check_resumable(resume, result)
        addition = {key: result[key] for key in ("code", "load_average_start", "machine")}
        result = {**resume, "rows": dict(resume["rows"]), "commands": dict(resume.get("commands", {}))}
        result["resumed"] = [*resume.get("resumed", []), {"rows": list(rows), **addition}]

    def save() -> None:
        if out is not None:
            write_results(result, Path(out))

    clock = time.perf_counter()
    scene = write_benchmark_scene(scene_name, workdir / "scene", seed, profile.width, profile.height, profile.num_views)
    result["timings"]["write_scene_seconds"] = time.perf_counter() - clock
    base = build_config(profile, {}, scene, workdir, "baselines")
    result["labels"] = list(base.pipeline.datamanager.dataparser.setup().get_dataparser_outputs("train").metadata["labels"])

    for name in BASELINES:
        if name in rows:
            echo(f"[{scene_name}/{profile.name}] {name}")
            result["rows"][name] = baseline_2d(base, normalized_relevancy=name == BASELINE_RDA)
            result["commands"][name] = f"benchmarks.lab.evaluation.baseline_2d (no training, {name})"
            save()

    for method, table in VARIANT_METHODS.items():
        trained = [row for row in ROWS if row in rows and row in table]
        if trained:
            prefixed = lambda line: echo(f"[{scene_name}/{profile.name}] {line}")  # noqa: E731
            _train_rows(method, trained, profile, scene, workdir, result, save, prefixed, reuse_reconstruction=resume is not None)

    elapsed = time.perf_counter() - started
    if resume is None:
        result["timings"]["total_seconds"] = elapsed
        result["load_average_end"] = load_average()
    else:
        result["resumed"][-1].update(total_seconds=elapsed, load_average_end=load_average())
    save()
    echo(format_table(result["rows"]))
    return result


class ResumeError(ValueError):
    """An earlier results file that a run cannot extend."""


def check_resumable(earlier: Dict[str, Any], fresh: Dict[str, Any]) -> None:
    """Raises :class:`ResumeError` naming what differs between an earlier result and the run about to
    extend it, where that would make their rows incomparable: the scene, the seed, or a profile
    setting of a method whose reconstruction the earlier result holds (the description is prose;
    a method without a recorded reconstruction trains a new one with the current settings)."""
    if not isinstance(earlier, dict) or not isinstance(earlier.get("rows"), dict):
        raise ResumeError("the file to resume is not a results file of run_synthetic.py (no 'rows')")
    for key in ("scene", "seed"):
        if earlier.get(key) != fresh[key]:
            raise ResumeError(
                f"the results file to resume has {key} {earlier.get(key)!r}, not {fresh[key]!r}: resume it with "
                "the same --scene and --seed, or run the scene without --resume"
            )
    ignored = {"description"}
    if "reconstruction" not in earlier:
        ignored.add("overrides")
    if "splat_reconstruction" not in earlier:
        ignored.add("splat_overrides")
    profile = earlier.get("profile", {})
    for key, value in fresh["profile"].items():
        if key not in ignored and profile.get(key) != value:
            raise ResumeError(
                f"the results file to resume was run with another profile setting '{key}': its rows would not "
                "compare with new ones; run the scene again without --resume"
            )
