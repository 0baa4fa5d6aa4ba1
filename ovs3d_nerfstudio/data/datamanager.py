"""Serves training rays with their multi-scale CLIP targets, and eval images with label maps.

Training rays are sampled from the images downsampled ``ray_downscale`` x (paper: 8x),
the resolution at which the pixel CLIP features (Alg. 1) are computed, so every ray has an
exact feature target. Pixel indices come from nerfstudio's ``PixelSampler`` and rays from
its ``RayGenerator`` on the rescaled cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch
from jaxtyping import UInt8
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.evaluation import IGNORE
from ovs3d_nerfstudio.features.cache import FeatureCache
from ovs3d_nerfstudio.features.clip_pyramid import ClipFeatureStore, PixelClipPyramid, PyramidConfig, extract_pyramid
from ovs3d_nerfstudio.teachers.base import ClipTeacher
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig


class Ovs3dDataset(InputDataset):
    """An ``InputDataset`` whose items carry the ground-truth label map when the view has masks.

    ``gt_labels`` is an int64 [H, W] map of label indices, ``IGNORE`` where no mask covers
    the pixel, at the dataset's resolution (nearest-neighbour resized).
    """

    def get_metadata(self, data: Dict) -> Dict:
        masks = self.metadata.get("mask_paths", {}).get(data["image_idx"])
        if not masks:
            return {}
        height, width = data["image"].shape[:2]
        labels: List[str] = self.metadata["labels"]
        gt_labels = torch.full((height, width), IGNORE, dtype=torch.int64)
        for label, path in masks.items():
            if label not in labels:
                continue
            mask = Image.open(path).convert("L")
            if mask.size != (width, height):
                mask = mask.resize((width, height), Image.NEAREST)
            gt_labels[torch.from_numpy(np.asarray(mask) > 127)] = labels.index(label)
        return {"gt_labels": gt_labels}


@dataclass
class Ovs3dDataManagerConfig(VanillaDataManagerConfig):
    """Rays at 1/``ray_downscale`` resolution with their pixel CLIP features."""

    _target: Type = field(default_factory=lambda: Ovs3dDataManager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=Ovs3dDataParserConfig)
    train_num_rays_per_batch: int = 4096
    """Rays per training step (paper: 4096)."""
    ray_downscale: int = 8
    """Rays and CLIP features come from the images downsampled by this factor (paper: 8)."""
    clip: ClipTeacherConfig = field(default_factory=ClipTeacherConfig)
    """The CLIP-like teacher (built-in open_clip or an import path)."""
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    """Alg. 1 settings: patch fractions (one per scale) and window jitter seed."""
    clip_view_fraction: float = 1.0
    """Fraction of training views given CLIP features, evenly spaced (ablation, Table 2)."""
    cache_dir: Optional[Path] = None
    """Feature cache folder (default: $XDG_CACHE_HOME/ovs3d_nerfstudio). Keyed by content."""
    pixel_sampler: PixelSamplerConfig = field(default_factory=PixelSamplerConfig)
    """Samples pixel indices for the ray batches."""


class Ovs3dDataManager(VanillaDataManager[Ovs3dDataset]):
    """Ray batches with CLIP targets; eval images with ground-truth label maps."""

    config: Ovs3dDataManagerConfig

    def __init__(
        self,
        config: Ovs3dDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ):
        if not isinstance(config.dataparser, Ovs3dDataParserConfig):
            raise ValueError(
                f"ovs3d reads labels and masks through the 'ovs3d-data' dataparser, not "
                f"{type(config.dataparser).__name__}: end the command with 'ovs3d-data --data <scene>' "
                "(it also reads nerfstudio-format data with a labels.txt beside transforms.json)."
            )
        self._clip_teacher: Optional[ClipTeacher] = None
        self.segmentation_start = 0
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)
        labels: List[str] = self.train_dataparser_outputs.metadata["labels"]
        with torch.no_grad():
            text_features = self.clip_teacher.encode_text(labels).float().cpu()
        # The model reads these when it is built (VanillaPipeline passes the dataset metadata).
        self.train_dataset.metadata.update(
            text_features=text_features,
            num_scales=len(self.config.pyramid.patch_fractions),
            clip_teacher=self.clip_teacher,
        )

    @property
    def clip_teacher(self) -> ClipTeacher:
        if self._clip_teacher is None:
            self._clip_teacher = self.config.clip.setup(device=str(self.device))
        return self._clip_teacher

    # ------------------------------------------------------------------ training
    def setup_train(self):
        """Loads the ray-resolution images and the CLIP window store; no full-size image cache."""
        outputs = self.train_dataparser_outputs
        factor = self.config.ray_downscale
        self.ray_images = load_downscaled_images(outputs.image_filenames, factor).to(self.device)
        cameras: Cameras = outputs.cameras.to("cpu")
        cameras.rescale_output_resolution(1.0 / factor)
        height, width = self.ray_images.shape[1:3]
        if int(cameras.height[0]) != height or int(cameras.width[0]) != width:
            raise ValueError(
                f"cameras at 1/{factor} are {int(cameras.width[0])}x{int(cameras.height[0])} but the images are "
                f"{width}x{height}; use a --pipeline.datamanager.ray-downscale that divides the image size"
            )
        self.train_ray_generator = RayGenerator(cameras.to(self.device))
        self.train_pixel_sampler = self.config.pixel_sampler.setup(num_rays_per_batch=self.config.train_num_rays_per_batch)

        self.clip_views = clip_view_subset(len(outputs.image_filenames), self.config.clip_view_fraction)
        self.clip_store = self._load_clip_features(self.clip_views).to(self.device)
        self.clip_views = self.clip_views.to(self.device)

    def _load_clip_features(self, views: Tensor) -> ClipFeatureStore:
        """Computes (or reads from the content-keyed cache) Alg. 1 features of ``views``."""
        cache = FeatureCache(self.config.cache_dir)
        teacher = self.clip_teacher
        settings = {"pyramid": list(self.config.pyramid.patch_fractions), "seed": self.config.pyramid.seed}
        pyramids: List[PixelClipPyramid] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=CONSOLE, transient=False) as progress:
            task = progress.add_task("Pixel CLIP features (Alg. 1)", total=len(views))
            for view in views.tolist():
                image = self.ray_images[view].cpu()
                key = cache.key(image, teacher.identity, settings)

                def compute(image: UInt8[Tensor, "H W 3"] = image) -> Dict[str, Tensor]:
                    pixels = image.permute(2, 0, 1).float().div(255.0).to(self.device)
                    pyramid = extract_pyramid(pixels, teacher, self.config.pyramid, batch_size=self.config.clip.batch_size)
                    return pyramid.to_tensors()

                pyramids.append(PixelClipPyramid.from_tensors(cache.get_or_compute(key, compute)))
                progress.advance(task)
        store = ClipFeatureStore.from_pyramids(pyramids)
        CONSOLE.print(
            f"ovs3d: CLIP window store for {len(views)} views: {store.nbytes() / 2**20:.2f} MiB "
            f"({store.nbytes() / max(len(views), 1) / 2**10:.1f} KiB per view), cache {cache.root}"
        )
        return store

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        self.train_count += 1
        num_views, height, width = self.ray_images.shape[:3]
        segmenting = step >= self.segmentation_start
        assert self.train_pixel_sampler is not None
        num_rays = self.config.train_num_rays_per_batch
        if segmenting:
            # CLIP-supervised rays come from the views that have features.
            indices = self.train_pixel_sampler.sample_method(num_rays, len(self.clip_views), height, width, device=self.device)
            store_index = indices[:, 0].clone()
            indices[:, 0] = self.clip_views[store_index]
        else:
            indices = self.train_pixel_sampler.sample_method(num_rays, num_views, height, width, device=self.device)
        indices = indices.long()
        view, y, x = indices.unbind(dim=-1)
        batch: Dict[str, Tensor] = {"image": self.ray_images[view, y, x].float() / 255.0, "indices": indices}
        if segmenting:
            batch["clip_targets"] = self.clip_store.gather(store_index, y, x)
        return self.train_ray_generator(indices), batch


def clip_view_subset(num_views: int, fraction: float) -> Tensor:
    """Evenly spaced views that get CLIP features (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"clip-view-fraction must be in (0, 1], got {fraction}")
    count = max(1, int(round(num_views * fraction)))
    return torch.from_numpy(np.unique(np.linspace(0, num_views - 1, count).round().astype(np.int64)))


def load_downscaled_images(paths: List[Path], factor: int) -> UInt8[Tensor, "N H W 3"]:
    """Reads images and box-filters them down by ``factor`` (area averaging, like the official code)."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if factor > 1:
                image = image.resize((image.width // factor, image.height // factor), Image.BOX)
            images.append(torch.from_numpy(np.array(image)))
    return torch.stack(images)
