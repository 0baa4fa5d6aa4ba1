"""Training a benchmark row: nerfstudio's Trainer, timed per iteration, with every loss recorded.

**One reconstruction, many segmentations.** Every method of Table 2 differs from the full
method only in the segmentation stage (the losses, the CLIP targets or the views that have
them), and the reconstruction stage is RGB only. The runner therefore trains the
reconstruction stage once per scene and starts every method's segmentation stage from that
checkpoint through nerfstudio's own ``--load-checkpoint`` (``TrainerConfig.load_checkpoint``),
like the official code, which trains a TensoRF first and loads it for segmentation. This makes
the comparison controlled (same geometry for every row) and divides the CPU cost by almost the
number of methods. The ``ovs3d-splat`` rows share a Gaussian reconstruction of their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import torch

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig

from ovs3d_nerfstudio.config import Ovs3dTrainerConfig
from ovs3d_nerfstudio.training import train_in_process

from benchmarks.lab.diagnostics import ray_resolution_miou


@dataclass
class IterationLog:
    """Per-iteration wall time (callbacks included) and loss terms of one training run."""

    steps: List[int] = field(default_factory=list)
    phases: List[str] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)
    losses: List[Dict[str, float]] = field(default_factory=list)

    def phase_summary(self, rays_per_step: Optional[Callable[[str], int]] = None, skip: int = 3) -> Dict[str, Dict[str, float]]:
        """Iterations/s (and rays/s, given ``rays_per_step``) per phase, leaving out each phase's
        first ``skip`` iterations (allocator and proposal-sampler warm-up)."""
        summary: Dict[str, Dict[str, float]] = {}
        for phase in dict.fromkeys(self.phases):
            times = [s for s, p in zip(self.seconds, self.phases) if p == phase]
            timed = times[skip:] if len(times) > skip else times
            mean = sum(timed) / len(timed)
            summary[phase] = {
                "iterations": len(times),
                "timed_iterations": len(timed),
                "seconds_per_iteration": mean,
                "iterations_per_second": 1.0 / mean,
            }
            if rays_per_step is not None:
                summary[phase].update(rays_per_step=rays_per_step(phase), rays_per_second=rays_per_step(phase) / mean)
            summary[phase]["phase_seconds"] = sum(times)
        return summary

    def loss_curve(self, window: int) -> List[Dict[str, float]]:
        """Loss terms averaged over consecutive windows of ``window`` iterations (and phase)."""
        curve = []
        start = 0
        while start < len(self.steps):
            end = start + 1
            while end < len(self.steps) and end - start < window and self.phases[end] == self.phases[start]:
                end += 1
            names = sorted({name for losses in self.losses[start:end] for name in losses})
            row: Dict[str, Any] = {"step": self.steps[start], "phase": self.phases[start]}
            for name in names:
                values = [losses[name] for losses in self.losses[start:end] if name in losses]
                row[name] = sum(values) / len(values)
            curve.append(row)
            start = end
        return curve


class LabTrainer(Trainer):
    """nerfstudio's Trainer that records each iteration's wall time and loss terms in ``log``.

    A subclass because no nerfstudio hook sees every iteration's loss dict (the writers get it
    every ``steps_per_log`` steps only). The clock is two training callbacks around all others,
    so it times an iteration from the first before-callback to the last after-callback.
    """

    def __init__(self, config: TrainerConfig, log: IterationLog):
        super().__init__(config, local_rank=0, world_size=1)
        self.log = log
        self._iteration_started = 0.0

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        super().setup(test_mode)
        self.callbacks = [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._start_clock),
            *self.callbacks,
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._stop_clock),
        ]

    def _start_clock(self, step: int) -> None:
        self._iteration_started = time.perf_counter()

    def _stop_clock(self, step: int) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.log.steps.append(step)
        self.log.phases.append(self.pipeline.model.phase.value)
        self.log.seconds.append(time.perf_counter() - self._iteration_started)

    def train_iteration(self, step: int):
        loss, loss_dict, metrics_dict = super().train_iteration(step)
        self.log.losses.append({name: float(value.detach()) for name, value in loss_dict.items()})
        return loss, loss_dict, metrics_dict


@dataclass
class TrainedRun:
    trainer: LabTrainer
    log: IterationLog
    setup_seconds: float
    train_seconds: float


def train(config: Ovs3dTrainerConfig, resume: Optional[Path] = None, before_train: Optional[Callable[[Trainer], None]] = None) -> TrainedRun:
    """Trains ``config`` in this process with nerfstudio's Trainer; optionally from a checkpoint.

    ``resume`` is loaded as ``--load-checkpoint`` loads it (the pipeline keeps its own initial
    values of the groups a reconstruction checkpoint never trained, if their shapes differ:
    ``Ovs3dPipeline.load_pipeline``); ``config.max_num_iterations`` must then already be the
    number of steps left. ``before_train`` gets the set-up trainer (e.g. to start memory
    monitoring).
    """
    if resume is not None:
        config.load_checkpoint = Path(resume)
    log = IterationLog()
    trainer = LabTrainer(config.resolved(), log)
    times = train_in_process(trainer, before_train)
    return TrainedRun(trainer, log, times.setup_seconds, times.train_seconds)


def record_curve(
    trainer: Trainer,
    every: int,
    curve: List[Tuple[int, float]],
    score: Callable[[Any, Any], float] = ray_resolution_miou,
) -> None:
    """Appends (segmentation step, ray-resolution mIoU) to ``curve`` every ``every`` segmentation
    steps and after the last one: a learning curve that shows whether a row has flattened.
    ``score(model, datamanager)`` computes a point (rendered rays for ``ovs3d``; the splat rows
    pass :func:`splat_ray_resolution_miou`, which renders whole views)."""
    pipeline = trainer.pipeline
    schedule = pipeline.model.config.schedule
    start, end = schedule.reconstruction_steps, schedule.total_steps - 1

    def point(step: int) -> None:
        if step >= start and ((step - start) % every == 0 or step == end):
            curve.append((step - start, round(score(pipeline.model, pipeline.datamanager), 4)))

    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], point))


def final_checkpoint(trainer: Trainer) -> Path:
    """The checkpoint ``Trainer`` saved at the end of training."""
    return trainer.checkpoint_dir / f"step-{trainer.step:09d}.ckpt"


class PeakMemory:
    """The peak memory of one stage, from construction to :meth:`read`: torch's CUDA allocations
    and the process's resident set. The host peak is reset through Linux's ``clear_refs``;
    where that is impossible it is not reported, since it would include earlier stages."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            with open("/proc/self/clear_refs", "w", encoding="utf-8") as file:
                file.write("5")  # resets VmHWM, the peak resident set
            self.host_reset = True
        except OSError:
            self.host_reset = False

    def read(self) -> Dict[str, Optional[float]]:
        """``device_gib`` (None without CUDA) and ``host_rss_gib`` (None where it could not be reset)."""
        device_gib = round(torch.cuda.max_memory_allocated() / 2**30, 3) if self.cuda else None
        host_gib = None
        if self.host_reset:
            with open("/proc/self/status", encoding="utf-8") as file:
                for line in file:
                    if line.startswith("VmHWM:"):
                        host_gib = round(int(line.split()[1]) * 1024 / 2**30, 3)
        return {"device_gib": device_gib, "host_rss_gib": host_gib}
