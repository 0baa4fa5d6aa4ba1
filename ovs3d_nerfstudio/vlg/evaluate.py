"""Evaluation of point labels: against exact point labels, and in 2D on the annotated views.

Both use :func:`~ovs3d_nerfstudio.evaluation.segmentation_metrics` (the function ``ns-eval``
reports as ``miou`` / ``accuracy``) and, in 2D, :func:`~ovs3d_nerfstudio.evaluation.paper_metrics`
too, so the point path, the ``ovs3d`` field and the 2D teacher are compared on one scale. Points
are "pixels" of one view for the point metrics; mAcc is the mean over the ground truth's
classes of the fraction of their points predicted right.

Projection: each pixel of an annotated view takes the label of the nearest point that projects
into it (a z-buffer at the mask resolution); pixels no point reaches take the label of the
nearest pixel that one reaches, so every masked pixel gets a prediction.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy import ndimage
from torch import Tensor

from ..data.labels import IGNORE, normalize_label
from ..evaluation import paper_metrics, segmentation_metrics
from ..features.clip_pyramid import ClipFeatureStore
from .fusion import fusion_logits
from .views import SceneViews, project


def point_metrics(predicted: Int[Tensor, "N"], truth: Int[Tensor, "N"], num_classes: int) -> Dict[str, float]:
    """``miou`` and ``accuracy`` as ns-eval computes them for one view, over the points with a
    label, and ``macc``: the mean per-class accuracy over the classes of the ground truth."""
    metrics = segmentation_metrics(predicted.long(), truth.long(), num_classes)
    labelled = truth != IGNORE
    recalls = [
        float((predicted[labelled & (truth == c)] == c).double().mean())
        for c in torch.unique(truth[labelled]).tolist()
    ]
    return {**metrics, "macc": float(np.mean(recalls))}


def project_labels(
    xyz: Float[Tensor, "N 3"],
    labels: Int[Tensor, "N"],
    camera_to_world: Float[Tensor, "3 4"],
    intrinsics: Float[Tensor, "4"],
    height: int,
    width: int,
    downscale: float = 1.0,
) -> Int[Tensor, "H W"]:
    """The label map of points seen from one camera: the nearest point's label per pixel,
    the nearest reached pixel's label where no point projects, ``IGNORE`` if none does."""
    u, v, z = project(xyz, camera_to_world, intrinsics, downscale)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height) & (z > 0) & (labels != IGNORE)
    if not bool(inside.any()):
        return torch.full((height, width), IGNORE, dtype=torch.long)
    flat = v[inside].floor().long() * width + u[inside].floor().long()
    depth, label = z[inside], labels[inside].long()
    # The nearest point per pixel: sort by depth (farthest first) so the nearest writes last.
    order = torch.argsort(depth, descending=True)
    label_map = torch.full((height * width,), IGNORE, dtype=torch.long)
    label_map[flat[order]] = label[order]
    label_map = label_map.view(height, width)
    missing = (label_map == IGNORE).numpy()
    if missing.any():
        _, (rows, cols) = ndimage.distance_transform_edt(missing, return_indices=True)
        label_map = label_map[torch.from_numpy(rows), torch.from_numpy(cols)]
    return label_map


def view_metrics(pairs: Sequence[tuple], vocabulary: Sequence[str]) -> Dict[str, float]:
    """Per-view ``miou``/``accuracy`` (ns-eval) and ``miou_paper``/``accuracy_paper`` averaged
    over views, like ns-eval averages them."""
    rows: List[Dict[str, float]] = []
    for predicted, truth in pairs:
        metrics = segmentation_metrics(predicted, truth, len(vocabulary))
        paper = paper_metrics(predicted, truth, list(vocabulary))
        rows.append({**metrics, "miou_paper": paper["miou_paper"], "accuracy_paper": paper["accuracy_paper"]})
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def annotated_views_metrics(
    views: SceneViews,
    xyz: Float[Tensor, "N 3"],
    labels: Int[Tensor, "N"],
    vocabulary: Sequence[str],
) -> Optional[Dict[str, float]]:
    """2D metrics of point labels projected into every annotated view (None without masks)."""
    if not views.mask_paths:
        return None
    pairs = []
    for view in sorted(views.mask_paths):
        truth = vocabulary_label_map(views, view, vocabulary)
        predicted = project_labels(
            xyz,
            labels,
            torch.from_numpy(views.camera_to_worlds[view]),
            torch.from_numpy(views.intrinsics[view]),
            views.height,
            views.width,
        )
        pairs.append((predicted, truth))
    return view_metrics(pairs, vocabulary)


def vocabulary_label_map(views: SceneViews, view: int, vocabulary: Sequence[str]) -> Tensor:
    """An annotated view's ground truth at full resolution, indexed into ``vocabulary``."""
    truth = views.label_map(view, views.height, views.width)
    index = {normalize_label(label): i for i, label in enumerate(vocabulary)}
    table = torch.tensor([index.get(normalize_label(label), IGNORE) for label in views.labels] + [IGNORE])
    return table[torch.where(truth >= 0, truth, len(views.labels))]


@torch.no_grad()
def teacher_metrics(
    views: SceneViews,
    store: ClipFeatureStore,
    text_features: Tensor,
    vocabulary: Sequence[str],
    scene_classes: Optional[Tensor] = None,
) -> Optional[Dict[str, float]]:
    """The 2D teacher on its own: each annotated view's pixel features (scales normalised and
    averaged, as fused) scored against the text, argmax (over the scene's classes when given),
    upsampled (nearest) to the mask resolution. None without masks."""
    if not views.mask_paths:
        return None
    pairs = []
    for view in sorted(views.mask_paths):
        dense = torch.stack([torch.nn.functional.normalize(store.dense(view, s), dim=-1) for s in range(store.num_scales)])
        logits = fusion_logits(dense.mean(dim=0).reshape(-1, store.embed_dim), text_features)
        if scene_classes is not None:
            logits = logits.masked_fill(~scene_classes, float("-inf"))
        small = logits.argmax(dim=1).view(1, 1, store.height, store.width).float()
        predicted = torch.nn.functional.interpolate(small, size=(views.height, views.width), mode="nearest")[0, 0].long()
        pairs.append((predicted, vocabulary_label_map(views, view, vocabulary)))
    return view_metrics(pairs, vocabulary)
