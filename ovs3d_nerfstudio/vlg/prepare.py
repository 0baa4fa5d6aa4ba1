"""``prepare``: a scene's points with their fused 2D features, coverage and pseudo labels.

The pixel features are read from (or written to) the same content-keyed cache ``ns-train
ovs3d`` uses, with the same keys (:func:`~ovs3d_nerfstudio.features.clip_pyramid.cache_settings`
on the same box-filtered images), so a scene trained with ``ovs3d`` costs no teacher call here.
The result is one file per scene (:class:`PreparedScene`), written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.labels import IGNORE, normalize_label
from ..errors import UserFacingError
from ..features.cache import FeatureCache
from ..features.clip_pyramid import ClipFeatureStore, PixelClipPyramid, PyramidConfig, cache_settings, extract_pyramid
from ..teachers.base import ClipTeacher
from .files import write_atomically
from .fusion import DepthProvider, fuse, fusion_logits, pseudo_labels
from .points import LabelledPoints
from .progress import progress_bar
from .views import SceneViews

FORMAT_VERSION = 1


@dataclass
class PreparedScene:
    """Everything the later stages need of one scene, in the dataparser frame.

    ``vocabulary`` is the label set the logits and pseudo labels index (several scenes trained
    together share it); ``scene_labels`` are the labels the scene says it contains (its
    scene-level labels, the weak supervision); ``point_labels`` are exact labels into
    ``vocabulary`` where known (procedural scenes), for evaluation only.
    """

    name: str
    xyz: np.ndarray
    colours: np.ndarray
    vocabulary: List[str]
    text_features: Tensor
    scene_labels: List[str]
    fused: Tensor
    """``(N, D)`` float16, zero where no view sees the point."""
    coverage: Tensor
    """``(N,)`` int32: views that see each point."""
    pseudo: Tensor
    """``(N,)`` int64 into ``vocabulary``, masked to the scene's labels; ``IGNORE`` if unseen."""
    up: np.ndarray
    scale: float
    """The dataparser scale: original units -> these points' units."""
    views: SceneViews
    """The cameras (in the points' frame) and annotated views, for the 2D evaluation."""
    point_labels: Optional[np.ndarray] = None
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def covered(self) -> Tensor:
        return self.coverage > 0

    def scene_mask(self) -> Tensor:
        """``(C,)`` bool: the vocabulary entries among the scene's labels."""
        return self.vocabulary_mask(self.vocabulary, self.scene_labels)

    @staticmethod
    def vocabulary_mask(vocabulary: Sequence[str], labels: Sequence[str]) -> Tensor:
        """``(C,)`` bool: the vocabulary entries among ``labels`` (case and spacing ignored)."""
        present = {normalize_label(label) for label in labels}
        return torch.tensor([normalize_label(label) in present for label in vocabulary])

    def save(self, path: Path) -> Path:
        """Written to a temporary file and renamed, so a stopped run leaves no half file."""
        payload = {"format": FORMAT_VERSION, **self.__dict__}
        return write_atomically(path, lambda file: torch.save(payload, file))

    @classmethod
    def load(cls, path: Path) -> "PreparedScene":
        path = Path(path)
        if not path.is_file():
            raise UserFacingError(f"no prepared scene at {path}: run 'ovs3d-vlg prepare' first")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a damaged or foreign file must be one line, not a traceback
            raise UserFacingError(f"cannot read prepared scene {path} ({type(error).__name__}): prepare it again") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            raise UserFacingError(f"{path} is not a prepared scene of this version: prepare it again")
        payload.pop("format")
        return cls(**payload)


VOCABULARY_ADVICE = (
    "add them to the vocabulary (--vocabulary or the labels file) or leave the vocabulary out to use the scene's labels"
)


def check_vocabulary(
    vocabulary: Sequence[str], scene_labels: Sequence[str], scene: str, advice: str = VOCABULARY_ADVICE
) -> None:
    """Every scene label must be in the vocabulary, or the scene mask would drop a real class."""
    known = {normalize_label(label) for label in vocabulary}
    missing = [label for label in scene_labels if normalize_label(label) not in known]
    if missing:
        raise UserFacingError(f"the vocabulary lacks {', '.join(repr(m) for m in missing)} of scene {scene}: {advice}")


def load_pixel_features(
    images: Tensor, teacher: ClipTeacher, pyramid: PyramidConfig, cache: FeatureCache, batch_size: int
) -> Tuple[ClipFeatureStore, int]:
    """The Alg. 1 window store of ``(V, H, W, 3)`` uint8 images, from the cache where it has
    them; returns the store and how many views were computed."""
    settings = cache_settings(pyramid)
    keys = [cache.key(images[view].cpu(), teacher.identity, settings) for view in range(len(images))]
    tensors: List[Optional[Dict[str, Tensor]]] = [cache.load(key) for key in keys]
    missing = [view for view, found in enumerate(tensors) if found is None]
    if missing:
        with progress_bar("Pixel CLIP features (Alg. 1), views", len(missing)) as advance:
            for view in missing:
                pixels = images[view].permute(2, 0, 1).float().div(255.0)
                # The cache's own store-or-log: a read-only cache costs the next run a recomputation.
                tensors[view] = cache.get_or_compute(
                    keys[view], lambda: extract_pyramid(pixels, teacher, pyramid, batch_size).to_tensors()
                )
                advance()
    store = ClipFeatureStore.from_pyramids([PixelClipPyramid.from_tensors(t) for t in tensors])  # type: ignore[arg-type]
    return store, len(missing)


def sensor_depth(views: SceneViews, height: int, width: int) -> DepthProvider:
    """Depth images of nerfstudio data (``depth_file_path``), in the dataparser frame's units,
    nearest-resized to the feature resolution; 0 (unknown) stays unknown."""
    if not views.depth_filenames:
        raise UserFacingError(
            f"{views.data} has no depth images (depth_file_path in transforms.json): use --depth zbuffer"
        )
    filenames = views.depth_filenames

    def provider(view: int) -> Tensor:
        with Image.open(filenames[view]) as image:
            depth = np.asarray(image.resize((width, height), Image.NEAREST), dtype=np.float64)
        return torch.from_numpy(depth * views.depth_unit_scale_factor * views.scale)

    return provider


def prepare_scene(
    name: str,
    points: LabelledPoints,
    views: SceneViews,
    store: ClipFeatureStore,
    downscale: int,
    text_features: Tensor,
    vocabulary: Sequence[str],
    depth: Optional[DepthProvider],
    up: np.ndarray,
    info: Optional[Dict[str, object]] = None,
) -> PreparedScene:
    """Stage 1 on one scene: fusion, coverage, logits, masked pseudo labels."""
    check_vocabulary(vocabulary, views.labels, name)
    xyz = torch.from_numpy(points.xyz).double()
    with progress_bar(f"Fusing 2D features into {len(xyz)} points, views", store.num_views) as advance:
        fused, coverage = fuse(
            xyz,
            store,
            torch.from_numpy(views.camera_to_worlds),
            torch.from_numpy(views.intrinsics),
            float(downscale),
            depth,
            on_view=advance,
        )
    scene = PreparedScene(
        name=name,
        xyz=points.xyz,
        colours=points.colours,
        vocabulary=list(vocabulary),
        text_features=text_features.float().cpu(),
        scene_labels=list(views.labels),
        fused=fused.half(),
        coverage=coverage.int(),
        pseudo=torch.empty(0, dtype=torch.long),
        up=up,
        scale=views.scale,
        views=views,
        point_labels=_to_vocabulary(points, vocabulary),
        info=dict(info or {}),
    )
    logits = fusion_logits(fused, scene.text_features)
    scene.pseudo = pseudo_labels(logits, scene.covered, scene.scene_mask())
    return scene


def _to_vocabulary(points: LabelledPoints, vocabulary: Sequence[str]) -> Optional[np.ndarray]:
    """Exact point labels re-indexed into the vocabulary (``IGNORE`` where unknown)."""
    if points.labels is None or points.label_names is None:
        return None
    index = {normalize_label(label): i for i, label in enumerate(vocabulary)}
    table = np.array([index.get(normalize_label(label), IGNORE) for label in points.label_names] + [IGNORE])
    return table[np.where(points.labels >= 0, points.labels, len(points.label_names))]

