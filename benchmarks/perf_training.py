"""Training throughput and peak memory per phase (reconstruction, segmentation-frozen, segmentation-joint).

One in-process ``ns-train ovs3d`` run (nerfstudio's Trainer) of a benchmark profile on one
synthetic scene, with the phases shortened to ``--steps`` each so that all three are
measured side by side in the same process. Per phase: iterations/s, random rays/s, rendered
rays/s (random + FDA patch rays) and peak memory:

* cuda: ``torch.cuda.max_memory_allocated``, reset at the first step of each phase;
* cpu: the largest resident set size sampled every 10 ms by a background thread during the
  phase (``/proc/self/statm``), and the RSS when the phase started. RSS counts everything
  the process holds (allocator caches, libraries, the cached features), so the growth over
  the phase's start is the informative part.

Also measured: the overhead a CLI run pays before training that an in-process run does not
(``ns-train ovs3d --help``: interpreter start, imports, entry points, tyro), which is what the
benchmark runner saves per row by training in-process.

    python benchmarks/perf_training.py --profile cpu --out benchmarks/results/training_cpu.json
    python benchmarks/perf_training.py --profile gpu --steps 200 --out benchmarks/results/training_gpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.perf_report import finish_report, run_context  # noqa: E402
from ovs3d_nerfstudio.schedule import Phase  # noqa: E402
from benchmarks.lab.reports import load_average  # noqa: E402
from benchmarks.lab.training import train  # noqa: E402
from ovs3d_nerfstudio.synthetic.profiles import PROFILES, build_config  # noqa: E402
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene  # noqa: E402
from ovs3d_nerfstudio.variants import resolve_options  # noqa: E402

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="utf-8") as file:
        return int(file.read().split()[1]) * PAGE_SIZE


class PhaseMemory:
    """Peak memory per training phase, recorded from trainer callbacks (see module docstring)."""

    def __init__(self, trainer: Trainer) -> None:
        self.schedule = trainer.pipeline.model.config.schedule
        self.cuda = trainer.device.startswith("cuda")
        self.phase: Optional[Phase] = None
        self.peaks: Dict[str, Dict[str, float]] = {}
        self._peak_rss = 0
        self._stop = threading.Event()
        trainer.callbacks.insert(0, TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._before))
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after))
        if not self.cuda:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak_rss = max(self._peak_rss, resident_bytes())

    def _before(self, step: int) -> None:
        phase = self.schedule.phase(step)
        if phase is self.phase:
            return
        self.phase = phase
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        else:
            start = resident_bytes()
            self._peak_rss = start
        self.peaks[phase.value] = {"start_mib": start / 2**20, "peak_mib": start / 2**20}

    def _after(self, step: int) -> None:
        assert self.phase is not None
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = max(self._peak_rss, resident_bytes())
        record = self.peaks[self.phase.value]
        record["peak_mib"] = max(record["peak_mib"], peak / 2**20)
        record["growth_mib"] = record["peak_mib"] - record["start_mib"]

    def stop(self) -> None:
        self._stop.set()


def cli_overhead(repeats: int) -> List[float]:
    """Wall seconds of ``ns-train ovs3d --help`` (everything a CLI run does before training starts)."""
    ns_train = str(Path(sys.executable).with_name("ns-train"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([ns_train, "ovs3d", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--scene", default="fruit_lawn")
    parser.add_argument("--steps", type=int, default=40, help="steps per phase")
    parser.add_argument("--skip", type=int, default=5, help="first steps of each phase left out of the timing")
    parser.add_argument("--cli-repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("outputs") / "perf_training")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    profile = PROFILES[args.profile]
    if profile.torch_threads is not None:
        torch.set_num_threads(profile.torch_threads)
    scene = write_benchmark_scene(args.scene, args.workdir / "scene", 0, profile.width, profile.height, profile.num_views)
    steps = {f"pipeline.model.schedule.{name}_steps": args.steps for name in ("reconstruction", "frozen", "joint")}
    config = build_config(profile, steps, scene, args.workdir, f"perf_{args.profile}")
    config.logging.local_writer.enable = False
    datamanager = config.pipeline.datamanager
    random_rays = datamanager.train_num_rays_per_batch
    rays_per_token = resolve_options(
        config.pipeline.model.variant, patch_rays_per_token=datamanager.patch_rays_per_token
    ).patch_rays_per_token
    patch_rays = datamanager.num_patches * (datamanager.patch_tokens * rays_per_token) ** 2

    def rendered_rays(phase: str) -> int:
        return random_rays + (patch_rays if phase != Phase.RECONSTRUCTION.value and config.pipeline.model.use_fda else 0)

    results: Dict[str, Any] = {
        "profile": args.profile,
        "scene": args.scene,
        **run_context(config.machine.device_type),
        "steps_per_phase": args.steps,
        "random_rays_per_step": random_rays,
        "patch_rays_per_step": patch_rays,
    }
    monitors: List[PhaseMemory] = []
    run = train(config, before_train=lambda trainer: monitors.append(PhaseMemory(trainer)))
    monitors[0].stop()
    summary = run.log.phase_summary(rendered_rays, skip=args.skip)
    for phase, row in summary.items():
        row["random_rays_per_second"] = random_rays * row["iterations_per_second"]
        row["rendered_rays_per_second"] = row.pop("rays_per_second")
        row["rendered_rays_per_step"] = row.pop("rays_per_step")
        row["memory"] = monitors[0].peaks[phase]
    results.update(phases=summary, setup_seconds=run.setup_seconds, load_average_after_training=load_average())
    overhead = cli_overhead(args.cli_repeats)
    results["cli_overhead_seconds"] = {"median": statistics.median(overhead), "runs": overhead}

    memory_kind = "allocated MiB" if config.machine.device_type.startswith("cuda") else "RSS MiB"
    print(f"{'phase':<22} {'it/s':>7} {'random rays/s':>14} {'rendered rays/s':>16} {'peak ' + memory_kind:>18} {'growth':>8}")
    for phase, row in summary.items():
        memory = row["memory"]
        print(
            f"{phase:<22} {row['iterations_per_second']:7.2f} {row['random_rays_per_second']:14.0f} "
            f"{row['rendered_rays_per_second']:16.0f} {memory['peak_mib']:18.0f} {memory.get('growth_mib', 0.0):8.0f}"
        )
    print(f"setup (data, features, model) {run.setup_seconds:.1f} s; CLI overhead per run {results['cli_overhead_seconds']['median']:.1f} s")
    finish_report(results, args.out)


if __name__ == "__main__":
    main()
