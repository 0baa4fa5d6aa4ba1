"""Segmentation metrics of the 3D-OVS protocol: per-view IoU per class, mIoU and accuracy."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from jaxtyping import Int
from torch import Tensor

IGNORE = -1
"""Ground-truth value of pixels that no mask covers; they are left out of every metric."""


def class_intersections_and_unions(
    predicted: Int[Tensor, "H W"], ground_truth: Int[Tensor, "H W"], num_classes: int
) -> Tuple[Tensor, Tensor]:
    """Per-class pixel counts |pred = c and gt = c| and |pred = c or gt = c| over labelled pixels."""
    if predicted.shape != ground_truth.shape:
        raise ValueError(f"prediction {tuple(predicted.shape)} and ground truth {tuple(ground_truth.shape)} differ")
    labelled = ground_truth != IGNORE
    if not bool(labelled.any()):
        raise ValueError("the ground-truth label map has no labelled pixel")
    predicted = predicted[labelled].long()
    ground_truth = ground_truth[labelled].long()
    classes = torch.arange(num_classes, device=predicted.device)
    predicted_onehot = predicted[None, :] == classes[:, None]
    truth_onehot = ground_truth[None, :] == classes[:, None]
    intersection = (predicted_onehot & truth_onehot).sum(dim=1).double()
    union = (predicted_onehot | truth_onehot).sum(dim=1).double()
    return intersection, union


def segmentation_metrics(
    predicted: Int[Tensor, "H W"], ground_truth: Int[Tensor, "H W"], num_classes: int
) -> Dict[str, float]:
    """mIoU and pixel accuracy of one view against its ground-truth label map.

    IoU is computed for every class that appears in the ground truth or the prediction
    (a class in neither has no defined IoU) and averaged into ``miou``; ``accuracy`` is the
    fraction of labelled pixels predicted right. Pixels equal to ``IGNORE`` are skipped.
    """
    intersection, union = class_intersections_and_unions(predicted, ground_truth, num_classes)
    labelled = ground_truth != IGNORE
    correct = (predicted[labelled].long() == ground_truth[labelled].long()).double().mean()
    return {"miou": float((intersection[union > 0] / union[union > 0]).mean()), "accuracy": float(correct)}


def class_count_metrics(predicted: Tensor, ground_truth: Tensor, labels: List[str]) -> Dict[str, float]:
    """Per-class counts as scalar metrics, so ns-eval's mean over views keeps their ratio.

    The mean of ``intersection/<label>`` over views divided by the mean of ``union/<label>``
    is the scene-level IoU of that class (total intersection over total union), which
    :func:`per_class_iou` turns into ``iou/<label>`` after averaging.
    """
    intersection, union = class_intersections_and_unions(predicted, ground_truth, len(labels))
    metrics = {f"intersection/{label}": float(i) for label, i in zip(labels, intersection)}
    metrics.update({f"union/{label}": float(u) for label, u in zip(labels, union)})
    return metrics


def per_class_iou(averaged: Dict[str, float]) -> Dict[str, float]:
    """Replaces averaged per-class counts by ``iou/<label>`` (classes never seen are left out)."""
    result = {key: value for key, value in averaged.items() if not key.startswith(("intersection/", "union/"))}
    for key, value in averaged.items():
        if key.startswith("union/") and not key.endswith("_std") and value > 0:
            label = key[len("union/") :]
            result[f"iou/{label}"] = averaged[f"intersection/{label}"] / value
    return result
