"""Reusable pieces of the synthetic benchmark: profiles, methods, training, evaluation, 2D baseline.

``benchmarks/run_synthetic.py`` is the command; this module holds what it (and the tests and
the performance scripts) share:

* :class:`Profile` — the settings of a benchmark run as data (dotted ``TrainerConfig`` paths
  -> values), so every number is written down once, printed in the results, and turned into
  the equivalent ``ns-train`` flags by :func:`cli_flags`.
* :data:`METHODS` — the full method and the ablations of the paper's Table 2, each a set of
  overrides on top of the profile, i.e. exactly the ``ns-train ovs3d`` flags a user would pass.
* :func:`build_config` — a ``TrainerConfig`` from the registered ``ovs3d`` method spec plus
  overrides: the benchmark trains the same configuration ``ns-train ovs3d`` would.
* :func:`train` — nerfstudio's own ``Trainer`` in this process (``config.setup``,
  ``trainer.setup``, ``trainer.train``), with per-iteration timing and loss capture.
* :func:`evaluate` — ``pipeline.get_average_eval_image_metrics()``, the code ``ns-eval`` runs,
  plus per-class IoU from the same renders.
* :func:`baseline_2d` — the 2D teacher baseline: per view, argmax over labels of the cosine
  between the text features and the Alg. 1 pixel features averaged over scales.

**One reconstruction, many segmentations.** Every method of Table 2 differs from the full
method only in the segmentation stage (the losses, the CLIP targets or the views that have
them), and the reconstruction stage is RGB only. The runner therefore trains the
reconstruction stage once per scene and starts every method's segmentation stage from that
checkpoint (:func:`resume_from_reconstruction`), like the official code, which trains a TensoRF
first and loads it for segmentation. This makes the comparison controlled (same geometry for
every row) and divides the CPU cost by almost the number of methods. Each row is otherwise
the run ``ns-train ovs3d <profile flags> <method flags>`` would do from that step on.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer

from ovs3d_nerfstudio.config import ovs3d_method
from ovs3d_nerfstudio.data.datamanager import Ovs3dDataset, load_downscaled_images
from ovs3d_nerfstudio.evaluation import IGNORE, paper_metrics, segmentation_metrics
from ovs3d_nerfstudio.features.clip_pyramid import extract_pyramid
from ovs3d_nerfstudio.features.relevancy import normalized_relevancy_maps
from ovs3d_nerfstudio.schedule import TRAINABLE, Phase
from ovs3d_nerfstudio.synthetic.diagnostics import diagnose, ray_resolution_miou
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene

SYNTHETIC_CLIP = "ovs3d_nerfstudio.synthetic.teachers:synthetic_clip"
SYNTHETIC_DINO = "ovs3d_nerfstudio.synthetic.teachers:synthetic_dino"

BASELINE = "baseline_2d"
"""Name of the 2D teacher baseline row (no training)."""
BASELINE_RDA = "baseline_2d_rda"
"""Name of the 2D baseline of RDA's target: argmax of the normalised relevancy (no training)."""
BASELINES = (BASELINE, BASELINE_RDA)

NEVER = 10**9
"""Step interval that never comes: no in-training evaluation, no intermediate checkpoint."""


@dataclass(frozen=True)
class Profile:
    """Everything a benchmark run fixes besides the scene and the method.

    ``overrides`` are dotted attribute paths of ``TrainerConfig`` and their values, applied to
    the registered ``ovs3d`` method config; :func:`cli_flags` prints them as ``ns-train`` flags.
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

    def steps(self) -> Tuple[int, int, int]:
        """(reconstruction, frozen, joint) steps after the overrides."""
        schedule = build_config(self, {}, Path("."), Path("."), "steps").pipeline.model.schedule
        return schedule.reconstruction_steps, schedule.frozen_steps, schedule.joint_steps


_SYNTHETIC_TEACHERS: Dict[str, Any] = {
    "pipeline.datamanager.clip.source": SYNTHETIC_CLIP,
    "pipeline.datamanager.dino.source": SYNTHETIC_DINO,
    # Crops per encoder call only (each crop is embedded from its own pixels alone).
    "pipeline.datamanager.clip.batch_size": 256,
}

_PAPER_FROZEN_STEPS, _PAPER_JOINT_STEPS = 5000, 10000
_CPU_STEPS = (600, 400, 800)
"""CPU profile (reconstruction, frozen, joint) steps: the required rows of a scene in under an hour on
2 cores, with learning curves that have flattened (docs/benchmarks.md)."""

PROFILES: Dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        description=(
            "2 CPU cores, < 60 min per scene for the two baselines and the five required trained rows: "
            "160x120 images, 80x60 rays (ray_downscale 2), a small torch field, 512 rays and (32, 16) + 16 "
            "samples per ray, 4 FDA patches of 8x8 tokens (64 px, 1 ray per token), 600 + 400 + 800 steps "
            "(segmentation 1:2 like the paper's 5k:10k). MLP learning rates of the segmentation phases "
            "are the paper's x (paper steps / profile steps), so that the CLIP head can move as far as in "
            "the paper's 15k steps; volume learning rates are the paper's. One torch thread."
        ),
        width=160,
        height=120,
        torch_threads=1,
        overrides={
            **_SYNTHETIC_TEACHERS,
            "machine.device_type": "cpu",
            "mixed_precision": False,
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
            "pipeline.datamanager.train_num_rays_per_batch": 512,
            "pipeline.datamanager.ray_downscale": 2,
            "pipeline.datamanager.num_patches": 4,
            "pipeline.datamanager.patch_tokens": 8,
            "pipeline.datamanager.patch_downscale": 1,
            "pipeline.datamanager.patch_rays_per_token": 1,
        },
    ),
    "gpu": Profile(
        name="gpu",
        description=(
            "The paper's settings on one GPU: 1008x756 images, 504x378 rays (ray_downscale 2: the "
            "paper's ray resolution, 4032x3024 photos at 1/8), 4096 rays, 8 FDA patches of 32x32 tokens "
            "(256 px) with one rendered ray per token as in the official code, 30k + 5k + 10k steps, the "
            "paper's learning rates, the default (full-size) field with tiny-cuda-nn when installed."
        ),
        width=1008,
        height=756,
        overrides={
            **_SYNTHETIC_TEACHERS,
            "machine.device_type": "cuda",
            "pipeline.datamanager.ray_downscale": 2,
            # 1008x756 is already close to the paper's 806x604 patch images (4032x3024 / 5).
            "pipeline.datamanager.patch_downscale": 1,
            # The official code average-pools each 8x8 block of patch *rays* into one ray per token.
            "pipeline.datamanager.patch_rays_per_token": 1,
        },
    ),
}

METHODS: Dict[str, Mapping[str, Any]] = {
    "distill_only": {"pipeline.model.use_rda": False, "pipeline.model.use_fda": False},
    "full": {},
    "no_rda": {"pipeline.model.use_rda": False},
    "no_fda": {"pipeline.model.use_fda": False},
    "no_rebalance": {"pipeline.model.fda_rebalance": False},
    "full_paper": {"pipeline.model.variant": "paper"},
    "full_official": {"pipeline.model.variant": "official"},
    "single_scale": {"pipeline.datamanager.pyramid.patch_fractions": (0.142857,)},
    "views_10pct": {"pipeline.datamanager.clip_view_fraction": 0.1},
    "full_all_views": {"pipeline.datamanager.clip_view_fraction": 1.0},
}
"""Trained rows: the full method (default variant), distillation alone, the ablations of the
paper's Table 2, the full method as printed (``full_paper``) and as the official code computes
it (``full_official``), and the default with CLIP features for every view (``full_all_views``)."""
REQUIRED_ROWS: Tuple[str, ...] = (*BASELINES, "distill_only", "full", "no_rda", "no_fda", "no_rebalance")
"""The rows the CPU profile's one-hour budget per scene is sized for."""

ROWS: Tuple[str, ...] = (*BASELINES, *METHODS)
"""Every row of the results table, in print order."""


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
) -> TrainerConfig:
    """The registered ``ovs3d`` TrainerConfig with the profile's and the method's overrides.

    Training runs in this process without a viewer (``vis tensorboard``: the event files hold
    the loss curves) and without in-training evaluation; features are cached under
    ``workdir/cache`` so that all rows share one extraction per pyramid setting.
    """
    config: TrainerConfig = copy.deepcopy(ovs3d_method.config)
    for path, value in {**profile.overrides, **method_overrides}.items():
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


def seed_everything(seed: int) -> None:
    """What ``ns-train`` does before building the trainer (``_set_random_seed``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------- training
@dataclass
class IterationLog:
    """Per-iteration wall time (callbacks included) and loss terms of one training run."""

    steps: List[int] = field(default_factory=list)
    phases: List[str] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)
    losses: List[Dict[str, float]] = field(default_factory=list)

    def phase_summary(self, rays_per_step: Callable[[str], int], skip: int = 3) -> Dict[str, Dict[str, float]]:
        """Iterations/s and rays/s per phase, leaving out each phase's first ``skip`` iterations
        (allocator and proposal-sampler warm-up)."""
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
                "rays_per_step": rays_per_step(phase),
                "rays_per_second": rays_per_step(phase) / mean,
                "phase_seconds": sum(times),
            }
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


def _record_iterations(trainer: Trainer, log: IterationLog) -> None:
    """Times every iteration from the first before-callback to the last after-callback and
    keeps the loss dict that ``train_iteration`` returns (the trainer logs it only every
    ``steps_per_log`` steps)."""
    clock: Dict[str, float] = {}

    def before(step: int) -> None:
        clock["start"] = time.perf_counter()

    def after(step: int) -> None:
        if trainer.device.startswith("cuda"):
            torch.cuda.synchronize()
        log.steps.append(step)
        log.phases.append(trainer.pipeline.model.phase.value)
        log.seconds.append(time.perf_counter() - clock["start"])

    trainer.callbacks.insert(0, TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before))
    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after))
    train_iteration = trainer.train_iteration

    def recording_iteration(step: int):
        loss, loss_dict, metrics_dict = train_iteration(step)
        log.losses.append({name: float(value.detach()) for name, value in loss_dict.items()})
        return loss, loss_dict, metrics_dict

    trainer.train_iteration = recording_iteration  # type: ignore[method-assign]


def _reconstruction_only_parameters(trainer: Trainer) -> List[str]:
    """Names of model parameters the reconstruction stage never trains (frozen there)."""
    groups = trainer.pipeline.model.get_param_groups()
    untrained = {id(p) for group, params in groups.items() if group not in TRAINABLE[Phase.RECONSTRUCTION] for p in params}
    return [f"_model.{name}" for name, p in trainer.pipeline.model.named_parameters() if id(p) in untrained]


def resume_from_reconstruction(trainer: Trainer, checkpoint: Path) -> None:
    """Loads a reconstruction-stage checkpoint into a set-up trainer, as ``--load-checkpoint`` does.

    Same steps as nerfstudio's ``Trainer._load_checkpoint`` (pipeline, optimizers, grad
    scaler, start step), except that parameters the reconstruction never trained may differ in
    shape (the single-scale ablation's selection head has one output instead of three): those
    keep this run's initial values. Any other mismatch is an error.
    """
    state = torch.load(checkpoint, map_location="cpu")
    current = trainer.pipeline.state_dict()
    may_differ = set(_reconstruction_only_parameters(trainer))
    pipeline_state = dict(state["pipeline"])
    for key, value in state["pipeline"].items():
        if key in current and current[key].shape != value.shape:
            if key not in may_differ:
                raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != model {tuple(current[key].shape)}")
            pipeline_state[key] = current[key]
    trainer.pipeline.load_pipeline(pipeline_state, state["step"])
    trainer.optimizers.load_optimizers(state["optimizers"])
    trainer.grad_scaler.load_state_dict(state["scalers"])
    trainer._start_step = state["step"] + 1  # what _load_checkpoint sets; there is no public setter


@dataclass
class TrainedRun:
    trainer: Trainer
    log: IterationLog
    setup_seconds: float
    train_seconds: float


def train(config: TrainerConfig, resume: Optional[Path] = None, before_train: Optional[Callable[[Trainer], None]] = None) -> TrainedRun:
    """Trains ``config`` in this process with nerfstudio's Trainer; optionally resumes a checkpoint.

    With ``resume``, ``config.max_num_iterations`` must already be the number of steps left
    (nerfstudio trains that many steps after the loaded one). The event writers that
    ``trainer.setup`` registers are removed afterwards, so the next run in this process
    does not write into this run's logs. ``before_train`` gets the set-up trainer (e.g. to
    start memory monitoring).
    """
    seed_everything(config.machine.seed)
    writers_before = len(writer.EVENT_WRITERS)
    start = time.perf_counter()
    trainer = config.setup(local_rank=0, world_size=1)
    config.save_config()  # as ns-train does: ns-eval / ns-viewer / ns-render can load the run
    trainer.setup()
    if resume is not None:
        resume_from_reconstruction(trainer, resume)
    log = IterationLog()
    _record_iterations(trainer, log)
    setup_seconds = time.perf_counter() - start
    if before_train is not None:
        before_train(trainer)
    try:
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
    finally:
        for event_writer in writer.EVENT_WRITERS[writers_before:]:
            tb_writer = getattr(event_writer, "tb_writer", None)
            if tb_writer is not None:
                tb_writer.close()
        del writer.EVENT_WRITERS[writers_before:]
    return TrainedRun(trainer, log, setup_seconds, train_seconds)


def record_curve(trainer: Trainer, every: int, curve: List[Tuple[int, float]]) -> None:
    """Appends (segmentation step, ray-resolution mIoU) to ``curve`` every ``every`` segmentation
    steps and after the last one: a learning curve that shows whether a row has flattened."""
    pipeline = trainer.pipeline
    schedule = pipeline.model.config.schedule
    start, end = schedule.reconstruction_steps, schedule.total_steps - 1

    def point(step: int) -> None:
        if step >= start and ((step - start) % every == 0 or step == end):
            curve.append((step - start, round(ray_resolution_miou(pipeline.model, pipeline.datamanager), 4)))

    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], point))


def final_checkpoint(trainer: Trainer) -> Path:
    """The checkpoint ``Trainer`` saved at the end of training."""
    return trainer.checkpoint_dir / f"step-{trainer.step:09d}.ckpt"


# ------------------------------------------------------------------------------ evaluation
def _pooled_class_iou(pairs: Sequence[Tuple[Tensor, Tensor]], labels: Sequence[str]) -> Dict[str, Optional[float]]:
    """Per-class IoU with intersections and unions summed over all views (a diagnostic: the
    headline mIoU is the per-view mean of :func:`segmentation_metrics`)."""
    num = len(labels)
    intersection = torch.zeros(num, dtype=torch.float64)
    union = torch.zeros(num, dtype=torch.float64)
    for predicted, truth in pairs:
        keep = truth != IGNORE
        predicted, truth = predicted[keep], truth[keep]
        classes = torch.arange(num)
        pred_onehot = predicted[None] == classes[:, None]
        true_onehot = truth[None] == classes[:, None]
        intersection += (pred_onehot & true_onehot).sum(dim=1).double()
        union += (pred_onehot | true_onehot).sum(dim=1).double()
    return {label: (float(i / u) if u > 0 else None) for label, i, u in zip(labels, intersection, union)}


def _confusions(pairs: Sequence[Tuple[Tensor, Tensor]], labels: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """For each true class, the fraction of its pixels given each predicted label (nonzero only)."""
    num = len(labels)
    matrix = torch.zeros(num, num, dtype=torch.float64)
    for predicted, truth in pairs:
        keep = truth != IGNORE
        matrix += torch.bincount(truth[keep] * num + predicted[keep], minlength=num * num).view(num, num).double()
    rows = matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    return {
        labels[t]: {labels[p]: round(float(rows[t, p]), 4) for p in range(num) if rows[t, p] > 0}
        for t in range(num)
    }


def evaluate(trainer: Trainer, on_view: Optional[Callable[[Tensor, Tensor], None]] = None) -> Dict[str, Any]:
    """``pipeline.get_average_eval_image_metrics()`` (what ``ns-eval`` reports) plus per-class
    IoU and confusions from the same renders, captured at the model's metrics hook.
    ``on_view(predicted, truth)`` also sees each annotated view's label maps."""
    pipeline = trainer.pipeline
    model = pipeline.model
    pairs: List[Tuple[Tensor, Tensor]] = []
    metrics_hook = model.get_image_metrics_and_images

    def capturing(outputs, batch):
        result = metrics_hook(outputs, batch)
        if "gt_labels" in batch:
            pairs.append((outputs["class_probabilities"].argmax(dim=-1).cpu(), batch["gt_labels"].cpu()))
            if on_view is not None:
                on_view(*pairs[-1])
        return result

    model.get_image_metrics_and_images = capturing  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        metrics = pipeline.get_average_eval_image_metrics()
    finally:
        del model.get_image_metrics_and_images
    labels = list(model.labels)
    return {
        "miou": metrics["miou"],
        "accuracy": metrics["accuracy"],
        "miou_paper": metrics["miou_paper"],
        "accuracy_paper": metrics["accuracy_paper"],
        "psnr": metrics["psnr"],
        "num_views": len(pairs),
        "per_class_iou": _pooled_class_iou(pairs, labels),
        "confusion": _confusions(pairs, labels),
        "eval_seconds": time.perf_counter() - start,
    }


def baseline_2d(config: TrainerConfig, normalized_relevancy: bool = False) -> Dict[str, Any]:
    """The 2D teacher baseline on the eval views, scored like :func:`evaluate`.

    Per view: Alg. 1 pixel features at the ray resolution (the training targets of the
    field), label = argmax over labels of cos(text, feature) of the features averaged over
    the scales (no selection: the teacher alone cannot choose a scale); or, with
    ``normalized_relevancy`` (row ``baseline_2d_rda``), argmax of the per-class min-max
    normalised relevancy of Eq. 7 averaged over the scales, i.e. what RDA's target alone
    labels. Upsampled nearest-neighbour to the eval resolution and scored with
    :func:`segmentation_metrics` against the same ground truth the eval datamanager serves;
    ``miou``/``accuracy`` and the paper protocol's ``miou_paper``/``accuracy_paper`` are
    means over views, as in ``get_average_eval_image_metrics``.
    """
    datamanager = config.pipeline.datamanager
    outputs = datamanager.dataparser.setup().get_dataparser_outputs(split="val")
    dataset = Ovs3dDataset(outputs)
    device = config.machine.device_type
    teacher = datamanager.clip.setup(device=device)
    labels: List[str] = outputs.metadata["labels"]
    start = time.perf_counter()
    with torch.no_grad():
        text = F.normalize(teacher.encode_text(labels).float().to(device), dim=-1)
        images = load_downscaled_images(outputs.image_filenames, datamanager.ray_downscale)
        per_view, pairs = [], []
        for index in range(len(dataset)):
            truth = dataset[index].get("gt_labels")
            if truth is None:
                continue
            pixels = images[index].permute(2, 0, 1).float().div(255.0).to(device)
            pyramid = extract_pyramid(pixels, teacher, datamanager.pyramid, datamanager.clip.crops_per_batch(device))
            features = torch.stack([pyramid.dense(s) for s in range(pyramid.num_scales)]).to(device)
            if normalized_relevancy:
                predicted = normalized_relevancy_maps(features, text).mean(dim=0).argmax(dim=0)
            else:
                predicted = (F.normalize(features.mean(dim=0), dim=-1) @ text.T).argmax(dim=-1)
            predicted = F.interpolate(predicted[None, None].float(), size=tuple(truth.shape), mode="nearest")[0, 0]
            predicted = predicted.long().cpu()
            per_view.append({**segmentation_metrics(predicted, truth, len(labels)), **paper_metrics(predicted, truth, labels)})
            pairs.append((predicted, truth))
    means = {key: float(np.mean([m[key] for m in per_view])) for key in ("miou", "accuracy", "miou_paper", "accuracy_paper")}
    return {
        **means,
        "psnr": None,
        "num_views": len(per_view),
        "per_class_iou": _pooled_class_iou(pairs, labels),
        "confusion": _confusions(pairs, labels),
        "eval_seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def _memory_gib() -> Optional[float]:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):  # sysconf names missing on this platform
        return None


def machine_description(device: str) -> Dict[str, Any]:
    """CPU model, core count, memory, torch threads, GPU name: what a timing depends on."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def write_results(results: Mapping[str, Any], out: Path) -> None:
    """Writes a benchmark's results as indented JSON, creating the folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")


def code_version() -> Dict[str, Any]:
    """Commit and locally modified files of the checkout the package runs from (None outside git):
    results are only comparable between runs of the same code."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--short"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified": None}
    modified = [line[3:] for line in status.stdout.splitlines() if line[:2].strip() and not line.startswith("??")]
    return {"commit": commit.stdout.strip(), "modified": modified}


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages (other users of the CPU make timings noisy)."""
    return [round(value, 2) for value in os.getloadavg()]


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text table of mIoU and accuracy (and PSNR where trained), one line per row."""
    lines = [f"{'method':<14} {'mIoU':>7} {'accuracy':>9} {'PSNR':>7}", "-" * 40]
    for name, result in rows.items():
        psnr = result.get("psnr")
        psnr_text = f"{psnr:7.2f}" if isinstance(psnr, float) and math.isfinite(psnr) else f"{'-':>7}"
        lines.append(f"{name:<14} {result['miou']:7.4f} {result['accuracy']:9.4f} {psnr_text}")
    return "\n".join(lines)


def as_json(value: Any) -> Any:
    """Profiles and paths in JSON-friendly form."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: as_json(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------- runner
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
            result["commands"][name] = f"ovs3d_nerfstudio.synthetic.benchmark.baseline_2d (no training, {name})"
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
        metrics = evaluate(run.trainer)
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
