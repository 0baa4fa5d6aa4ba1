"""Training and evaluating a config in this process, through nerfstudio's public API.

What ``ns-train`` does (seed, ``Trainer.setup``, save the config, ``Trainer.train``) and what
``ns-eval`` does (``get_average_eval_image_metrics``), for ``ovs3d-demo`` and the benchmark lab
(``benchmarks/lab``), which train and score runs without a subprocess per run.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from nerfstudio.engine.trainer import Trainer
from nerfstudio.utils import writer

from ovs3d_nerfstudio.evaluation import confusions, pooled_class_iou, segmentation_metrics


def seed_everything(seed: int) -> None:
    """What ``ns-train`` does before building the trainer (its ``_set_random_seed``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainingTimes:
    setup_seconds: float
    """Data, teachers, features and model (``Trainer.setup``)."""
    train_seconds: float
    """``Trainer.train``."""


def train_in_process(trainer: Trainer, before_train: Optional[Callable[[Trainer], None]] = None) -> TrainingTimes:
    """Sets up and trains ``trainer`` as ``ns-train`` would, in this process.

    A checkpoint named by the config (``load_dir``/``load_step`` or ``load_checkpoint``) is
    loaded by ``Trainer.setup``, and training then runs ``max_num_iterations`` steps after it.
    The event writers that ``Trainer.setup`` registers are closed and removed afterwards, so the
    next run in this process does not write into this run's logs. ``before_train`` gets the
    set-up trainer (e.g. to add training callbacks).
    """
    config = trainer.config
    seed_everything(config.machine.seed)
    # nerfstudio keeps its event writers in a module-level list that Trainer.setup appends to and
    # offers no call to remove them: each in-process run closes and drops its own, so the next
    # run does not log into this one's files.
    writers_before = len(writer.EVENT_WRITERS)
    start = time.perf_counter()
    config.save_config()  # as ns-train does first: ns-eval / ns-viewer / ns-render can load the run
    trainer.setup()
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
    return TrainingTimes(setup_seconds, train_seconds)


def evaluate(pipeline, on_view: Optional[Callable[[Tensor, Tensor], None]] = None) -> Dict[str, Any]:
    """``pipeline.get_average_eval_image_metrics()`` (what ``ns-eval`` reports) plus per-class
    IoU, confusions and each view's mIoU from the same renders, which the model hands to its
    eval-view listeners.
    ``on_view(predicted, truth)`` also sees each annotated view's label maps."""
    model = pipeline.model
    pairs: List[Tuple[Tensor, Tensor]] = []

    def capture(predicted: Tensor, truth: Tensor) -> None:
        pairs.append((predicted, truth))
        if on_view is not None:
            on_view(predicted, truth)

    model.eval_view_listeners.append(capture)
    start = time.perf_counter()
    try:
        metrics = pipeline.get_average_eval_image_metrics()
    finally:
        model.eval_view_listeners.remove(capture)
    labels = list(model.labels)
    return {
        "miou": metrics["miou"],
        "accuracy": metrics["accuracy"],
        "miou_paper": metrics["miou_paper"],
        "accuracy_paper": metrics["accuracy_paper"],
        "psnr": metrics["psnr"],
        "num_views": len(pairs),
        "per_class_iou": pooled_class_iou(pairs, labels),
        "confusion": confusions(pairs, labels),
        "per_view_miou": [segmentation_metrics(predicted, truth, len(labels))["miou"] for predicted, truth in pairs],
        "eval_seconds": time.perf_counter() - start,
    }
