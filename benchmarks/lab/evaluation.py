"""The 2D teacher baselines of the benchmark table, scored like a trained row."""

from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from nerfstudio.engine.trainer import TrainerConfig

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataset, load_downscaled_images
from ovs3d_nerfstudio.evaluation import confusions, paper_metrics, pooled_class_iou, segmentation_metrics
from ovs3d_nerfstudio.features.clip_pyramid import extract_pyramid
from ovs3d_nerfstudio.features.relevancy import normalized_relevancy_maps


def baseline_2d(config: TrainerConfig, normalized_relevancy: bool = False) -> Dict[str, Any]:
    """The 2D teacher baseline on the eval views, scored like ``ovs3d_nerfstudio.training.evaluate``.

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
        "per_class_iou": pooled_class_iou(pairs, labels),
        "confusion": confusions(pairs, labels),
        "per_view_miou": [m["miou"] for m in per_view],
        "eval_seconds": time.perf_counter() - start,
    }
