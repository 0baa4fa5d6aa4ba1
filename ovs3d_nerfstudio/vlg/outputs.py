"""What ``predict`` writes: the labelled ``.ply``, ``labels.txt``, the legend, optional
per-point embeddings (for text queries on points) and ``metrics.json``.

A prediction folder belongs to the command: an existing one is replaced only with
``--overwrite``, so a user's files are never overwritten by surprise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UserFacingError
from ..legend_image import write_legend
from ..palette import palette
from .files import write_atomically
from .ply import write_ply

CLIP_LOGIT_SCALE = 100.0
"""CLIP's trained temperature: confidences are softmax(100 * cosine), as CLIP scores labels."""

PLY_NAME = "points.ply"
FILES = (PLY_NAME, "labels.txt", "legend.png", "embeddings.npy", "metrics.json")


@dataclass
class Prediction:
    """Per-point results: labels into the vocabulary, confidence, and optionally the embeddings."""

    labels: Tensor
    confidence: Tensor
    embeddings: Optional[Tensor] = None


def label_points(
    embeddings: Tensor, text_features: Tensor, scene_classes: Optional[Tensor] = None, keep_embeddings: bool = False
) -> Prediction:
    """Argmax of the cosine logits (summed over test-time repeats, then averaged) over the
    vocabulary, or over the scene's classes when ``scene_classes`` is given."""
    norms = embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    unit = embeddings / norms
    logits = unit @ torch.nn.functional.normalize(text_features.float(), dim=1).T
    if scene_classes is not None:
        logits = logits.masked_fill(~scene_classes, float("-inf"))
    probabilities = torch.softmax(CLIP_LOGIT_SCALE * logits, dim=1)
    confidence, labels = probabilities.max(dim=1)
    return Prediction(labels=labels, confidence=confidence, embeddings=unit.half() if keep_embeddings else None)


def prepare_folder(folder: Path, overwrite: bool) -> Path:
    folder = Path(folder)
    existing = [name for name in FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise UserFacingError(
            f"{folder} already holds a prediction ({', '.join(existing)}): pass --overwrite to replace it, "
            "or choose another output folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (folder / name).unlink()
    return folder


def write_prediction(
    folder: Path,
    xyz: np.ndarray,
    colours: np.ndarray,
    prediction: Prediction,
    pseudo: Tensor,
    coverage: Tensor,
    vocabulary: Sequence[str],
) -> Dict[str, Path]:
    """The labelled ``.ply`` (input colour as ``red green blue``; ``label``, ``confidence``,
    ``pseudo_label``, ``coverage``), ``labels.txt`` (line i names label i), ``legend.png`` and,
    when the prediction kept them, ``embeddings.npy`` (unit float16 rows)."""
    folder = Path(folder)
    paths = {"ply": folder / PLY_NAME, "labels": folder / "labels.txt", "legend": folder / "legend.png"}
    write_ply(
        paths["ply"],
        xyz,
        colours,
        labels=prediction.labels.numpy(),
        extra={
            "confidence": prediction.confidence.float().numpy(),
            "pseudo_label": pseudo.int().numpy(),
            "coverage": coverage.int().numpy(),
        },
    )
    paths["labels"].write_text("".join(f"{label}\n" for label in vocabulary), encoding="utf-8")
    write_legend(list(vocabulary), palette(len(vocabulary)), paths["legend"])
    if prediction.embeddings is not None:
        paths["embeddings"] = folder / "embeddings.npy"
        np.save(paths["embeddings"], prediction.embeddings.numpy())
    return paths


def write_json(path: Path, content: Dict) -> Path:
    return write_atomically(path, lambda file: json.dump(content, file, indent=2, sort_keys=True), binary=False)
