"""Segmentation metrics of the 3D-OVS protocol: per-view IoU per class, mIoU and accuracy."""

from __future__ import annotations

from typing import Dict

import torch
from jaxtyping import Int
from torch import Tensor

IGNORE = -1
"""Ground-truth value of pixels that no mask covers; they are left out of every metric."""


def segmentation_metrics(
    predicted: Int[Tensor, "H W"], ground_truth: Int[Tensor, "H W"], num_classes: int
) -> Dict[str, float]:
    """mIoU and pixel accuracy of one view against its ground-truth label map.

    IoU is computed for every class that appears in the ground truth or the prediction
    (a class in neither has no defined IoU) and averaged into ``miou``; ``accuracy`` is the
    fraction of labelled pixels predicted right. Pixels equal to ``IGNORE`` are skipped.
    """
    if predicted.shape != ground_truth.shape:
        raise ValueError(f"prediction {tuple(predicted.shape)} and ground truth {tuple(ground_truth.shape)} differ")
    labelled = ground_truth != IGNORE
    predicted = predicted[labelled].long()
    ground_truth = ground_truth[labelled].long()
    if ground_truth.numel() == 0:
        raise ValueError("the ground-truth label map has no labelled pixel")
    classes = torch.arange(num_classes, device=predicted.device)
    predicted_onehot = predicted[None, :] == classes[:, None]
    truth_onehot = ground_truth[None, :] == classes[:, None]
    intersection = (predicted_onehot & truth_onehot).sum(dim=1).double()
    union = (predicted_onehot | truth_onehot).sum(dim=1).double()
    iou = torch.where(union > 0, intersection / union.clamp_min(1), torch.full_like(union, float("nan")))
    return {"miou": float(iou[union > 0].mean()), "accuracy": float((predicted == ground_truth).double().mean())}
