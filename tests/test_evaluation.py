"""The segmentation metric of the 3D-OVS protocol, checked against ground truth and by hand."""

from __future__ import annotations

import torch

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataset
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.data.procedural import render_scene, tiny_scene_spec, write_scene
from ovs3d_nerfstudio.evaluation import IGNORE, class_count_metrics, per_class_iou, segmentation_metrics


def test_ground_truth_rendered_through_the_metric_scores_one(tmp_path):
    spec = tiny_scene_spec(seed=3)
    scene = write_scene(spec, tmp_path / "scene", mask_views=[1, 5])
    outputs = Ovs3dDataParserConfig(data=scene).setup().get_dataparser_outputs(split="test")
    dataset = Ovs3dDataset(outputs)
    rendered = render_scene(spec).label_maps
    file_labels = outputs.metadata["labels"]
    for index, view in enumerate(outputs.metadata["view_indices"]):
        gt_labels = dataset[index]["gt_labels"]
        # Ground truth from the renderer, mapped from the spec's label order to the file's.
        truth = torch.tensor([file_labels.index(label) for label in spec.labels])[torch.from_numpy(rendered[view])]
        assert bool((gt_labels != IGNORE).all())
        metrics = segmentation_metrics(truth, gt_labels, len(file_labels))
        assert metrics == {"miou": 1.0, "accuracy": 1.0}


def test_metric_matches_a_hand_computation():
    truth = torch.tensor([[0, 0, 1, 1], [0, 2, 2, IGNORE]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])
    # class 0: I=2, U=4; class 1: I=2, U=3; class 2: I=1, U=2; ignored pixel left out.
    metrics = segmentation_metrics(predicted, truth, num_classes=4)
    assert abs(metrics["miou"] - (2 / 4 + 2 / 3 + 1 / 2) / 3) < 1e-12
    assert abs(metrics["accuracy"] - 5 / 7) < 1e-12


def test_per_class_iou_is_total_intersection_over_total_union():
    labels = ["cat", "wall"]
    views = [
        (torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 1, 1, 1]])),
        (torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 1]])),
    ]
    per_view = [class_count_metrics(p, t, labels) for p, t in views]
    averaged = {key: sum(m[key] for m in per_view) / len(per_view) for key in per_view[0]}
    result = per_class_iou(averaged)
    assert result == {"iou/cat": 1 / 2, "iou/wall": 6 / 7}
