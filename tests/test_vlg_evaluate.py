"""Evaluation of point labels: point mIoU / mAcc as ns-eval scores a view, and projection of
point labels into a view (nearest point per pixel, holes filled from the nearest pixel)."""

from __future__ import annotations

import pytest
import torch

from ovs3d_nerfstudio.data.labels import IGNORE
from ovs3d_nerfstudio.evaluation import segmentation_metrics
from ovs3d_nerfstudio.vlg.evaluate import point_metrics, project_labels, view_metrics
from ovs3d_nerfstudio.vlg.outputs import label_points


def test_point_metrics():
    truth = torch.tensor([0, 0, 0, 1, 1, 2, IGNORE])
    predicted = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    metrics = point_metrics(predicted, truth, 3)
    # IoU: class 0 = 2/3, class 1 = 2/4, class 2 = 0/1; accuracy 4/6; recalls 2/3, 1, 0.
    assert metrics["miou"] == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["macc"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert {k: metrics[k] for k in ("miou", "accuracy")} == segmentation_metrics(predicted, truth, 3)
    # An unlabelled prediction (index C) is wrong and in no class's intersection or union but its truth's.
    unlabelled = point_metrics(torch.tensor([0, 3, 1]), torch.tensor([0, 0, 1]), 3)
    assert unlabelled["miou"] == pytest.approx((1 / 2 + 1) / 2)
    assert unlabelled["macc"] == pytest.approx((1 / 2 + 1) / 2)


def _camera():
    pose = torch.zeros(3, 4, dtype=torch.float64)
    pose[:, :3] = torch.eye(3, dtype=torch.float64)
    return pose, torch.tensor([4.0, 4.0, 2.0, 2.0], dtype=torch.float64)


def test_projection_takes_the_nearest_point_and_fills_holes():
    pose, intrinsics = _camera()
    # Pixel (row 0, col 0) gets two points: the nearer (label 3) wins whatever the order.
    xyz = torch.tensor(
        [[-1.5, 1.5, -4.0], [-0.75, 0.75, -2.0], [0.25, -0.25, -1.0], [0.0, 0.0, 5.0], [1.0, 1.0, -1.0]],
        dtype=torch.float64,
    )
    labels = torch.tensor([1, 3, 2, 0, IGNORE])
    label_map = project_labels(xyz, labels, pose, intrinsics, 4, 4)
    assert label_map[0, 0] == 3 and label_map[2, 3] == 2
    assert (label_map != IGNORE).all()  # every other pixel is filled from the nearest reached pixel
    assert set(label_map.unique().tolist()) == {2, 3}
    nothing = project_labels(xyz[3:4], labels[3:4], pose, intrinsics, 4, 4)
    assert (nothing == IGNORE).all()


def test_view_metrics_average_like_ns_eval():
    truth = torch.tensor([[0, 0], [1, IGNORE]])
    pairs = [(torch.tensor([[0, 1], [1, 1]]), truth), (truth.clamp(min=0), truth)]
    metrics = view_metrics(pairs, ["a", "b"])
    first = segmentation_metrics(*pairs[0], 2)
    assert metrics["miou"] == pytest.approx((first["miou"] + 1.0) / 2)
    assert metrics["accuracy"] == pytest.approx((first["accuracy"] + 1.0) / 2)
    assert set(metrics) == {"miou", "accuracy", "miou_paper", "accuracy_paper"}


def test_label_points_with_tta_sums_and_scene_mask():
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.1]])
    summed = torch.tensor([[2.0, 0.1], [0.2, 1.9], [-2.0, 0.0]])  # two passes summed
    prediction = label_points(summed, text, keep_embeddings=True)
    assert prediction.labels.tolist() == [0, 1, 2]
    assert ((prediction.confidence > 0.34) & (prediction.confidence <= 1)).all()
    torch.testing.assert_close(prediction.embeddings.float().norm(dim=1), torch.ones(3), atol=1e-3, rtol=0)
    masked = label_points(summed, text, torch.tensor([True, True, False]))
    assert masked.labels.tolist() == [0, 1, 1] and masked.embeddings is None
