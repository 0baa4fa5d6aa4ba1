"""Where a trained row loses the teacher's label information, per class.

Everything is measured on the annotated views at the *ray resolution* (the resolution of
the CLIP targets; the official evaluation's 1/8 training resolution), against the ground
truth resized there nearest-neighbour:

* the argmax label of each scale's targets, of the scale-averaged targets (the 2D teacher),
  of the *selected* targets (what the field is asked to reproduce: the targets mixed by the
  field's rendered selection, exactly as the supervision loss mixes them) and of the rendered
  features (what the field answers);
* the argmax of the per-class min-max normalised relevancy (Eq. 7), scales averaged and
  selected: what RDA's target alone would label;
* per class: the mean rendered selection weight of each scale, and the cosine between the
  rendered feature and the selected target, raw and *centred* (the scene's mean target
  subtracted from both sides, i.e. without the component that every target shares).

Reading the table top to bottom locates the loss: a class right in ``scale_mean`` but wrong
in ``selected`` was lost by the selection; right in ``selected`` but wrong in ``rendered``
was lost by the distillation (or a loss that overrides it).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs3d_nerfstudio import losses
from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManager, load_label_map
from ovs3d_nerfstudio.data.labels import IGNORE
from ovs3d_nerfstudio.evaluation import pooled_class_iou, segmentation_metrics
from ovs3d_nerfstudio.features.relevancy import normalized_relevancy_maps
from ovs3d_nerfstudio.model import Ovs3dModel
from ovs3d_nerfstudio.splat.datamanager import Ovs3dSplatDataManager
from ovs3d_nerfstudio.splat.model import Ovs3dSplatModel
from ovs3d_nerfstudio.splat.scoring import latent_space_logits


def rounded_class_iou(pairs: Sequence[Tuple[Tensor, Tensor]], labels: Sequence[str]) -> Dict[str, Any]:
    """:func:`pooled_class_iou` to 4 digits (None where a class never occurs)."""
    return {label: (None if iou is None else round(iou, 4)) for label, iou in pooled_class_iou(pairs, labels).items()}


def _mean_miou(pairs: Sequence[Tuple[Tensor, Tensor]], num_classes: int) -> float:
    return float(sum(segmentation_metrics(p, t, num_classes)["miou"] for p, t in pairs) / max(len(pairs), 1))


def annotated_views(datamanager: Ovs3dDataManager) -> Dict[int, Dict[str, Any]]:
    """Training view index -> its mask files, for the training views that have masks."""
    return dict(datamanager.train_dataset.metadata.get("mask_paths", {}))


@torch.no_grad()
def render_view_features(model: Ovs3dModel, datamanager: Ovs3dDataManager, view: int) -> Dict[str, Tensor]:
    """Rendered CLIP features [H, W, D] and selection [H, W, Ns] of a training view at the ray resolution."""
    height, width = datamanager.ray_images.shape[1:3]
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    indices = torch.stack([torch.full_like(y, view), y, x], dim=-1).reshape(-1, 3).to(datamanager.device)
    bundle = model.collider(datamanager.train_ray_generator(indices))
    was_training = model.training
    model.eval()
    try:
        chunk = model.config.eval_num_rays_per_chunk
        parts: Dict[str, List[Tensor]] = {"clip": [], "selection": []}
        for start in range(0, len(indices), chunk):
            outputs = model.render(bundle[start : start + chunk], with_features=True)
            for key in parts:
                parts[key].append(outputs[key])
    finally:
        model.train(was_training)
    return {key: torch.cat(values).reshape(height, width, -1) for key, values in parts.items()}


def _argmax_labels(features: Tensor, text: Tensor) -> Tensor:
    return losses.segmentation_logits(features, text).argmax(dim=-1).cpu()


@torch.no_grad()
def ray_resolution_miou(model: Ovs3dModel, datamanager: Ovs3dDataManager) -> float:
    """mIoU (mean over annotated views) of the rendered labels at the ray resolution: a cheap curve point."""
    labels: List[str] = list(model.labels)
    height, width = datamanager.ray_images.shape[1:3]
    pairs = []
    for view, masks in annotated_views(datamanager).items():
        rendered = render_view_features(model, datamanager, view)
        pairs.append((_argmax_labels(rendered["clip"], model.text_features), load_label_map(masks, labels, height, width)))
    return _mean_miou(pairs, len(labels))


@torch.no_grad()
def splat_ray_resolution_miou(model: Ovs3dSplatModel, datamanager: Ovs3dSplatDataManager) -> float:
    """:func:`ray_resolution_miou` of a splat row: each annotated view rendered whole by its
    training camera and labelled in the latent space, as the splat model labels every image."""
    labels: List[str] = list(model.labels)
    height, width = datamanager.ray_images.shape[1:3]
    pairs = []
    for view, masks in annotated_views(datamanager).items():
        images = model.render(datamanager.ray_cameras[view : view + 1].to(model.device), segmentation=True)
        logits = latent_space_logits(images["clip_latent"][0], images["accumulation"][0], model.clip_head, model.text_features)
        pairs.append((logits.argmax(dim=-1).cpu(), load_label_map(masks, labels, height, width)))
    return _mean_miou(pairs, len(labels))


@torch.no_grad()
def diagnose(model: Ovs3dModel, datamanager: Ovs3dDataManager) -> Dict[str, Any]:
    """Per-class diagnostics of a trained row (module docstring); JSON-ready."""
    labels: List[str] = list(model.labels)
    num_classes = len(labels)
    text = model.text_features
    height, width = datamanager.ray_images.shape[1:3]
    views = annotated_views(datamanager)
    store = datamanager.load_clip_features(torch.tensor(sorted(views)))
    sources: Dict[str, List[Tuple[Tensor, Tensor]]] = {}
    selection_sum = torch.zeros(num_classes, store.num_scales, dtype=torch.float64)
    cosine_sum = torch.zeros(num_classes, dtype=torch.float64)
    centred_sum = torch.zeros(num_classes, dtype=torch.float64)
    pixel_count = torch.zeros(num_classes, dtype=torch.float64)
    per_view = []
    for store_index, (view, masks) in enumerate(sorted(views.items())):
        truth = load_label_map(masks, labels, height, width)
        targets = torch.stack([store.dense(store_index, s) for s in range(store.num_scales)], dim=2).to(text)
        rendered = render_view_features(model, datamanager, view)
        selected = losses.selected_targets(targets, rendered["selection"], model.normalize_scale_targets)
        relevancy = normalized_relevancy_maps(targets.permute(2, 0, 1, 3), text).permute(2, 3, 0, 1)  # [H, W, Ns, C]
        decisions = {f"scale_{s}": _argmax_labels(targets[:, :, s], text) for s in range(store.num_scales)}
        decisions.update(
            scale_mean=_argmax_labels(targets.mean(dim=2), text),
            selected=_argmax_labels(selected, text),
            rendered=_argmax_labels(rendered["clip"], text),
            relevancy_mean=relevancy.mean(dim=2).argmax(dim=-1).cpu(),
            relevancy_selected=losses.selected_relevancy(
                relevancy.reshape(height * width, *relevancy.shape[2:]), rendered["selection"].reshape(height * width, -1)
            ).argmax(dim=-1).reshape(height, width).cpu(),
        )
        for name, decision in decisions.items():
            sources.setdefault(name, []).append((decision, truth))
        per_view.append((rendered, selected, truth))
    # The component every target shares: the mean selected target over the annotated pixels.
    shared = torch.cat([selected.reshape(-1, selected.shape[-1]) for _, selected, _ in per_view]).mean(dim=0)
    for rendered, selected, truth in per_view:
        keep = truth != IGNORE
        classes = truth[keep].to(text.device)
        clip = rendered["clip"][keep.to(text.device)]
        target = selected[keep.to(text.device)]
        cosine = F.cosine_similarity(clip, target, dim=-1)
        centred = F.cosine_similarity(clip - shared, target - shared, dim=-1)
        pixel_count += torch.bincount(classes, minlength=num_classes).double().cpu()
        cosine_sum += torch.bincount(classes, weights=cosine, minlength=num_classes).double().cpu()
        centred_sum += torch.bincount(classes, weights=centred, minlength=num_classes).double().cpu()
        for s in range(selection_sum.shape[1]):
            weights = rendered["selection"][keep.to(text.device)][:, s]
            selection_sum[:, s] += torch.bincount(classes, weights=weights, minlength=num_classes).double().cpu()
    count = pixel_count.clamp_min(1)

    def per_class(values: Tensor) -> Dict[str, Any]:
        return {label: (round(float(v), 4) if n > 0 else None) for label, v, n in zip(labels, values, pixel_count)}

    return {
        "resolution": [width, height],
        "miou": {name: round(_mean_miou(pairs, num_classes), 4) for name, pairs in sources.items()},
        "class_iou": {name: rounded_class_iou(pairs, labels) for name, pairs in sources.items()},
        "selection_weight": {
            label: ([round(float(w), 4) for w in selection_sum[c] / count[c]] if pixel_count[c] > 0 else None)
            for c, label in enumerate(labels)
        },
        "cosine": per_class(cosine_sum / count),
        "centred_cosine": per_class(centred_sum / count),
        "mean_cosine": round(float(cosine_sum.sum() / pixel_count.sum().clamp_min(1)), 4),
        "mean_centred_cosine": round(float(centred_sum.sum() / pixel_count.sum().clamp_min(1)), 4),
    }
