"""Segmentation metrics: per-view IoU per class, mIoU and accuracy, in two protocols.

* :func:`segmentation_metrics` (``miou``, ``accuracy``): per view, over the pixels some mask
  covers, the IoU of every class that appears in that view's ground truth or prediction,
  averaged; a class in neither is left out.
* :func:`paper_metrics` (``miou_paper``, ``accuracy_paper``): what the official 3D-OVS
  evaluation computes and the paper's tables report: sklearn's ``jaccard_score(gt_onehot,
  pred_onehot, average=None)`` and ``accuracy_score`` per view, i.e. the IoU of *every* class
  over *every* pixel, 0 for a class absent from both prediction and ground truth, and a pixel
  no mask covers (an all-zero one-hot row) never counts as right.

Both are per view; ns-eval (and the benchmark) average them over the views.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from jaxtyping import Int
from torch import Tensor

from ovs3d_nerfstudio.data.labels import IGNORE


def class_intersections_and_unions(
    predicted: Int[Tensor, "H W"], ground_truth: Int[Tensor, "H W"], num_classes: int
) -> Tuple[Tensor, Tensor]:
    """Per-class pixel counts |pred = c and gt = c| and |pred = c or gt = c| over labelled pixels."""
    if predicted.shape != ground_truth.shape:
        raise ValueError(f"prediction {tuple(predicted.shape)} and ground truth {tuple(ground_truth.shape)} differ")
    labelled = ground_truth != IGNORE
    if not bool(labelled.any()):
        raise ValueError("the ground-truth label map has no labelled pixel")
    return _class_counts(predicted[labelled], ground_truth[labelled], num_classes)


def _class_counts(predicted: Tensor, ground_truth: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Per-class intersection and union counts over every given pixel (``IGNORE`` matches no class)."""
    predicted, ground_truth = predicted.reshape(-1).long(), ground_truth.reshape(-1).long()
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


def paper_class_iou(predicted: Int[Tensor, "H W"], ground_truth: Int[Tensor, "H W"], num_classes: int) -> Tensor:
    """IoU of every class in one view over every pixel, as sklearn's ``jaccard_score(average=None)``
    computes it on one-hot rows: 0 for a class in neither prediction nor ground truth (sklearn's
    zero-division value), and ``IGNORE`` pixels count in the union of the class predicted there."""
    if predicted.shape != ground_truth.shape:
        raise ValueError(f"prediction {tuple(predicted.shape)} and ground truth {tuple(ground_truth.shape)} differ")
    if predicted.numel() == 0:
        raise ValueError("the view has no pixel")
    intersection, union = _class_counts(predicted, ground_truth, num_classes)
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.zeros_like(union))


def paper_metrics(predicted: Int[Tensor, "H W"], ground_truth: Int[Tensor, "H W"], labels: List[str]) -> Dict[str, float]:
    """The official evaluation of one view: ``miou_paper`` (mean of :func:`paper_class_iou` over
    all the scene's classes), ``accuracy_paper`` (fraction of *all* pixels predicted right, as
    sklearn's ``accuracy_score`` on one-hot rows) and ``iou_paper/<label>`` per class."""
    iou = paper_class_iou(predicted, ground_truth, len(labels))
    correct = (predicted.reshape(-1).long() == ground_truth.reshape(-1).long()).double().mean()
    metrics = {"miou_paper": float(iou.mean()), "accuracy_paper": float(correct)}
    metrics.update({f"iou_paper/{label}": float(value) for label, value in zip(labels, iou)})
    return metrics


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


def pooled_class_iou(pairs: Sequence[Tuple[Tensor, Tensor]], labels: Sequence[str]) -> Dict[str, Optional[float]]:
    """Per-class IoU with intersections and unions summed over all (prediction, ground truth)
    views, None for a class that never occurs: a diagnostic, the headline mIoU is the per-view
    mean of :func:`segmentation_metrics`."""
    intersection = torch.zeros(len(labels), dtype=torch.float64)
    union = torch.zeros(len(labels), dtype=torch.float64)
    for predicted, truth in pairs:
        labelled = truth != IGNORE
        counts = _class_counts(predicted[labelled], truth[labelled], len(labels))
        intersection += counts[0].cpu()
        union += counts[1].cpu()
    return {label: (float(i / u) if u > 0 else None) for label, i, u in zip(labels, intersection, union)}


def confusions(pairs: Sequence[Tuple[Tensor, Tensor]], labels: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """For each true class, the fraction of its labelled pixels given each predicted label (nonzero only)."""
    num = len(labels)
    matrix = torch.zeros(num, num, dtype=torch.float64)
    for predicted, truth in pairs:
        labelled = truth != IGNORE
        pixels = truth[labelled].long() * num + predicted[labelled].long()
        matrix += torch.bincount(pixels.cpu(), minlength=num * num).view(num, num).double()
    rows = matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    return {
        labels[t]: {labels[p]: round(float(rows[t, p]), 4) for p in range(num) if rows[t, p] > 0}
        for t in range(num)
    }
