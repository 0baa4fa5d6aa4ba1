"""The segmentation metric of the 3D-OVS protocol, checked against ground truth and by hand."""

from __future__ import annotations

import pytest
import torch

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataset
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.data.procedural import render_scene, write_scene
from tiny_scene import tiny_scene_spec
from ovs3d_nerfstudio.evaluation import (
    IGNORE,
    class_count_metrics,
    paper_class_iou,
    paper_metrics,
    per_class_iou,
    segmentation_metrics,
)


def test_ground_truth_rendered_through_the_metric_scores_one(tmp_path):
    spec = tiny_scene_spec(seed=3)
    scene = write_scene(spec, tmp_path / "scene", mask_views=[1, 5])
    outputs = Ovs3dDataParserConfig(data=scene).setup().get_dataparser_outputs(split="test")
    dataset = Ovs3dDataset(outputs)
    rendered = render_scene(spec).label_maps
    file_labels = outputs.metadata["labels"]
    for index, path in enumerate(outputs.image_filenames):
        view = int(path.stem)  # the generated scene names each image by its view index
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


def test_paper_protocol_matches_a_hand_computation():
    truth = torch.tensor([[0, 0, 1, 1], [0, 2, 2, IGNORE]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])
    # Every pixel counts: the uncovered pixel, predicted 1, joins class 1's union (I=2, U=4).
    # class 0: I=2, U=4; class 2: I=1, U=2; class 3 is in neither: 0, as sklearn's jaccard_score.
    metrics = paper_metrics(predicted, truth, ["a", "b", "c", "d"])
    assert metrics == {
        "miou_paper": (2 / 4 + 2 / 4 + 1 / 2 + 0.0) / 4,
        "accuracy_paper": 5 / 8,  # the uncovered pixel is never right
        "iou_paper/a": 0.5,
        "iou_paper/b": 0.5,
        "iou_paper/c": 0.5,
        "iou_paper/d": 0.0,
    }
    # The same view under the pooled-over-present-classes protocol, for contrast.
    assert abs(segmentation_metrics(predicted, truth, 4)["miou"] - (2 / 4 + 2 / 3 + 1 / 2) / 3) < 1e-12


def test_paper_protocol_degenerate_views():
    perfect = torch.tensor([[1, 1], [1, 1]])
    # One class present and right, two absent from both: the absent ones pull the mean down.
    assert paper_class_iou(perfect, perfect, 3).tolist() == [0.0, 1.0, 0.0]
    assert paper_metrics(perfect, perfect, ["a", "b", "c"])["miou_paper"] == 1 / 3
    uncovered = torch.full((2, 2), IGNORE)
    assert paper_metrics(perfect, uncovered, ["a", "b"])["accuracy_paper"] == 0.0
    assert paper_class_iou(perfect, uncovered, 2).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="differ"):
        paper_class_iou(perfect, perfect[:1], 2)
    with pytest.raises(ValueError, match="no pixel"):
        paper_class_iou(perfect[:0], perfect[:0], 2)


def test_paper_protocol_is_sklearn_on_one_hot_rows():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        truth = torch.randint(-1, 5, (12, 9), generator=generator)  # -1 = IGNORE: an all-zero one-hot row
        predicted = torch.randint(0, 4, (12, 9), generator=generator)  # class 4 never predicted
        truth_onehot = (truth.reshape(-1, 1) == torch.arange(6)).numpy()  # class 5 in neither
        predicted_onehot = (predicted.reshape(-1, 1) == torch.arange(6)).numpy()
        expected = sklearn_metrics.jaccard_score(truth_onehot, predicted_onehot, average=None, zero_division=0)
        metrics = paper_metrics(predicted, truth, list("abcdef"))
        assert paper_class_iou(predicted, truth, 6).numpy() == pytest.approx(expected, abs=1e-12)
        assert metrics["miou_paper"] == pytest.approx(expected.mean(), abs=1e-12)
        assert metrics["accuracy_paper"] == pytest.approx(sklearn_metrics.accuracy_score(truth_onehot, predicted_onehot))
