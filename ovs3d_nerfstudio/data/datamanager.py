"""Serves training rays with their CLIP and relevancy targets, FDA patches with their DINO
tokens, and eval images with ground-truth label maps.

Training rays are sampled from the images downsampled ``ray_downscale`` x (paper: 8x),
the resolution at which the pixel CLIP features (Alg. 1) and the normalised relevancy
maps (Eqs. 6-7) are computed, so every ray has exact targets. Patches come from the images
downsampled ``patch_downscale`` x (paper: 5x). Pixel indices come from nerfstudio's
``PixelSampler`` and rays from its ``RayGenerator`` on the rescaled cameras.

DINO tokens are cached per view and cropped per patch by default; ``dino_tokens
on-the-fly`` encodes each patch crop every step as the official code does (see
docs/benchmarks.md for the measurement behind the default).

A training batch holds ``num_random_rays`` random rays first (``image``, ``indices``, and in
segmentation their CLIP, relevancy and selection targets), then the FDA patch rays, whose DINO
tokens are ``dino_tokens``: the model splits outputs at ``num_random_rays``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from jaxtyping import UInt8
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.config_checks import datamanager_problems, raise_if_any
from ovs3d_nerfstudio.data.labels import IGNORE
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.data.patches import (
    check_patch_fits,
    check_rays_per_token,
    concat_ray_bundles,
    patch_ray_indices,
    sample_patch_origins,
)
from ovs3d_nerfstudio.errors import ConfigError, UserFacingError
from ovs3d_nerfstudio.features.cache import FeatureCache
from ovs3d_nerfstudio.features.clip_pyramid import (
    ClipFeatureStore,
    PixelClipPyramid,
    PyramidConfig,
    cache_settings,
    count_windows,
    extract_pyramid,
    patch_geometry,
)
from ovs3d_nerfstudio.features.cost import ExtractionCost
from ovs3d_nerfstudio.features.relevancy import normalized_relevancy_maps
from ovs3d_nerfstudio.features.scale_purity import WINDOW_REACH, purity_selection, scale_purity
from ovs3d_nerfstudio.teachers.base import ClipTeacher, DenseTeacher
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig, DinoTeacherConfig
from ovs3d_nerfstudio.teachers.shared import Teachers
from ovs3d_nerfstudio.variants import resolve_options


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
        return {"gt_labels": load_label_map(masks, self.metadata["labels"], height, width)}


def load_label_map(masks: Dict[str, Path], labels: List[str], height: int, width: int) -> Tensor:
    """Label-index map [height, width] of one view's mask files (nearest-neighbour resized), ``IGNORE`` elsewhere."""
    gt_labels = torch.full((height, width), IGNORE, dtype=torch.int64)
    for label, path in masks.items():
        if label not in labels:
            continue
        mask = Image.open(path).convert("L")
        if mask.size != (width, height):
            mask = mask.resize((width, height), Image.NEAREST)
        gt_labels[torch.from_numpy(np.asarray(mask) > 127)] = labels.index(label)
    return gt_labels


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
    clip_view_fraction: Optional[float] = None
    """Variant option. Fraction of training views given CLIP features, evenly spaced (ablation,
    Table 2; paper 1.0, official configs 0.5)."""
    cache_dir: Optional[Path] = None
    """Feature cache folder (default: $XDG_CACHE_HOME/ovs3d_nerfstudio). Keyed by content."""
    pixel_sampler: PixelSamplerConfig = field(default_factory=PixelSamplerConfig)
    """Samples pixel indices for the ray batches."""
    dino: DinoTeacherConfig = field(default_factory=DinoTeacherConfig)
    """The DINO-like dense teacher of the FDA loss (built-in DINO v1 or an import path)."""
    num_patches: int = 8
    """FDA patches per step (paper: 8)."""
    patch_tokens: int = 32
    """DINO tokens per patch side; a patch spans patch_tokens * stride pixels (paper: 32 -> 256 px)."""
    patch_downscale: float = 5
    """Patches come from the images resized by 1/this factor (paper: 5). Below 1 the images are
    upsampled (bicubic) and the patch rays rendered between pixels, so that each DINO token covers
    less of the scene: 0.5 halves a token's side (for images far smaller than the paper's)."""
    patch_rays_per_token: Optional[int] = None
    """Variant option. Rendered rays per token side, averaged into the token: 1 renders one ray per
    DINO token, 32x32 rays per 256 px patch (official: the 8x8 rays are average-pooled; the default);
    up to the DINO stride (8 = every pixel of the patch, the paper's patches, 64x the rays)."""
    dino_tokens: Literal["cached", "on-the-fly"] = "cached"
    """DINO tokens of each view computed once and cropped per patch, or encoded per patch every step."""


@dataclass(frozen=True)
class TrainingTargets:
    """What segmentation batches carry besides CLIP targets: the model's options decide, and the
    pipeline hands them to the datamanager's constructor (``training_targets``)."""

    variant: str = "default"
    """The model's variant: the datamanager's variant options follow it."""
    relevancy: bool = True
    """Relevancy targets of the RDA loss."""
    patches: bool = True
    """FDA patch rays and their DINO tokens."""
    selection_targets: bool = False
    """DINO-purity targets of the selection volume."""
    selection_target_shift: float = 0.7
    """The DINO similarity that counts as one object in the purity targets (the model's FDA shift b)."""


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
        teachers: Optional[Teachers] = None,
        targets: TrainingTargets = TrainingTargets(),
        segmentation_start: int = 0,
        labels: Sequence[str] = (),
        **kwargs,
    ):
        """``teachers`` are shared with the model (built here from the config when not given);
        batches before step ``segmentation_start`` are reconstruction batches (RGB only); ``labels``
        (``--pipeline.model.labels``) replace the dataparser's own, the first source of
        ``Ovs3dDataParser.resolve_labels``."""
        if not isinstance(config.dataparser, Ovs3dDataParserConfig):
            raise UserFacingError(
                f"ovs3d reads labels and masks through the 'ovs3d-data' dataparser, not "
                f"{type(config.dataparser).__name__}: end the command with 'ovs3d-data --data <scene>' "
                "(it also reads nerfstudio-format data with a labels.txt beside transforms.json)."
            )
        raise_if_any(datamanager_problems(config))
        if labels:  # a copy: the caller's config stays as given
            config = dataclasses.replace(config, dataparser=dataclasses.replace(config.dataparser, labels=tuple(labels)))
        self.options = resolve_options(
            targets.variant,
            clip_view_fraction=config.clip_view_fraction,
            patch_rays_per_token=config.patch_rays_per_token,
        )
        self.teachers = teachers if teachers is not None else Teachers(config.clip, config.dino, str(device))
        self.targets = targets
        self.segmentation_start = segmentation_start
        self._text_features: Optional[Tensor] = None
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)
        # The model reads these when it is built (the pipeline passes the dataset metadata).
        # A reloaded run (ns-eval/-render/-viewer) takes its text features from the checkpoint.
        metadata = self.train_dataset.metadata
        metadata["num_scales"] = len(self.config.pyramid.patch_fractions)
        if test_mode == "val":
            metadata["text_features"] = self.label_text_features().cpu()

    def _dataset_scale(self) -> float:
        """Resolution of the served views: nerfstudio's camera scale and the dataparser's downscale."""
        factor = float(self.config.dataparser.downscale_factor)
        if factor <= 0:
            raise UserFacingError(f"downscale-factor must be positive (1 = full resolution, 2 = half), got {factor:g}.")
        return self.config.camera_res_scale_factor / factor

    def create_train_dataset(self) -> Ovs3dDataset:
        return self.dataset_type(dataparser_outputs=self.train_dataparser_outputs, scale_factor=self._dataset_scale())

    def create_eval_dataset(self) -> Ovs3dDataset:
        return self.dataset_type(
            dataparser_outputs=self.dataparser.get_dataparser_outputs(split=self.test_split),
            scale_factor=self._dataset_scale(),
        )

    def label_text_features(self) -> Tensor:
        """CLIP text embeddings of the labels, [C, D] float32 on the datamanager's device (encoded once)."""
        if self._text_features is None:
            labels: List[str] = self.train_dataparser_outputs.metadata["labels"]
            with torch.no_grad():
                self._text_features = self.teachers.clip.encode_text(labels).float().to(self.device)
        return self._text_features

    # ------------------------------------------------------------------ training
    def setup_train(self):
        """Loads ray- and patch-resolution images, CLIP window store, relevancy maps, DINO tokens.

        Only for training: ``ns-eval``/``ns-viewer``/``ns-render`` need none of it.
        """
        if self.test_mode != "val":
            return
        outputs = self.train_dataparser_outputs
        factor = self.config.ray_downscale
        cameras = self._downscaled_cameras(factor, "ray-downscale", "divides the image size")
        self.ray_images = load_downscaled_images(outputs.image_filenames, factor).to(self.device)
        self.train_ray_generator = RayGenerator(cameras.to(self.device))
        self.train_pixel_sampler = self.config.pixel_sampler.setup(num_rays_per_batch=self.config.train_num_rays_per_batch)

        self.clip_views = clip_view_subset(len(outputs.image_filenames), self.options.clip_view_fraction)
        self.clip_store = self.load_clip_features(self.clip_views).to(self.device)
        self.clip_views = self.clip_views.to(self.device)
        if self.targets.relevancy:
            self.relevancy = self._relevancy_maps()
        if self.targets.patches or self.targets.selection_targets:
            self._setup_dino()
        if self.targets.patches:
            self._setup_patches()
        if self.targets.selection_targets:
            self.selection_targets = self._selection_targets()

    def _downscaled_cameras(self, factor: float, flag: str, advice: str) -> Cameras:
        """The training cameras at 1/``factor``, checked to have the size of the resized images
        (``load_downscaled_images``) before any image is read."""
        cameras: Cameras = self.train_dataparser_outputs.cameras.to("cpu")
        width, height = int(cameras.width[0]), int(cameras.height[0])
        cameras.rescale_output_resolution(1.0 / factor)
        if (int(cameras.width[0]), int(cameras.height[0])) != resized_size(width, height, factor):
            image_width, image_height = resized_size(width, height, factor)
            raise ConfigError(
                f"--pipeline.datamanager.{flag} {factor:g}: the {width}x{height} images at 1/{factor:g} are "
                f"{image_width}x{image_height} px but the cameras {int(cameras.width[0])}x"
                f"{int(cameras.height[0])}; use a factor that {advice}."
            )
        return cameras

    def _relevancy_maps(self) -> Tensor:
        """Eqs. 6-7 per view, scale and class at load time (official code): [Vc, Ns, C, H, W] fp16."""
        maps = []
        for store_index in range(self.clip_store.num_views):
            dense = torch.stack([self.clip_store.dense(store_index, s) for s in range(self.clip_store.num_scales)])
            maps.append(normalized_relevancy_maps(dense, self.label_text_features()).half())
        return torch.stack(maps)

    def _setup_dino(self) -> None:
        """The DINO teacher, the patch-resolution images and, when cached or needed for the
        selection targets, every view's DINO tokens."""
        outputs = self.train_dataparser_outputs
        self.dino_teacher: DenseTeacher = self.teachers.dino
        stride = self.dino_teacher.stride
        self.patch_cameras = self._downscaled_cameras(self.config.patch_downscale, "patch-downscale", "gives whole-pixel images")
        self.patch_images = load_downscaled_images(outputs.image_filenames, self.config.patch_downscale).to(self.device)
        self.dino_cache: Optional[Tensor] = None
        keep_tokens = self.targets.selection_targets or (self.targets.patches and self.config.dino_tokens == "cached")
        if keep_tokens:
            height, width = (size // stride * stride for size in self.patch_images.shape[1:3])
            with torch.no_grad():
                self.dino_cache = torch.cat(
                    [self._encode_dino(self.patch_images[v : v + 1, :height, :width]).half() for v in range(len(self.patch_images))]
                )

    def _setup_patches(self) -> None:
        stride = self.dino_teacher.stride
        check_rays_per_token(self.options.patch_rays_per_token, stride)
        self.patch_pixels = self.config.patch_tokens * stride
        check_patch_fits(int(self.patch_cameras.height[0]), int(self.patch_cameras.width[0]), self.patch_pixels)
        self.patch_ray_generator = RayGenerator(self.patch_cameras.to(self.device))

    def _selection_targets(self) -> Tensor:
        """DINO-purity target selection of every ray of every view, [V, Ns, H, W] fp16 (see
        :mod:`ovs3d_nerfstudio.features.scale_purity`)."""
        assert self.dino_cache is not None
        height, width = self.ray_images.shape[1:3]
        tokens_per_ray_pixel = self.config.ray_downscale / (self.config.patch_downscale * self.dino_teacher.stride)
        radii = [
            WINDOW_REACH * patch_geometry(height, width, fraction)[0] * tokens_per_ray_pixel
            for fraction in self.config.pyramid.patch_fractions
        ]
        grid_h, grid_w = self.dino_cache.shape[1:3]
        rows = (((torch.arange(height) + 0.5) * tokens_per_ray_pixel).long()).clamp(max=grid_h - 1).to(self.device)
        cols = (((torch.arange(width) + 0.5) * tokens_per_ray_pixel).long()).clamp(max=grid_w - 1).to(self.device)
        targets = []
        for view_tokens in self.dino_cache:
            purity = scale_purity(view_tokens, radii, self.targets.selection_target_shift)
            targets.append(purity_selection(purity)[:, rows[:, None], cols[None, :]].half())
        return torch.stack(targets)

    def _encode_dino(self, images: UInt8[Tensor, "B H W 3"]) -> Tensor:
        return self.dino_teacher.encode_dense(images.permute(0, 3, 1, 2).float() / 255.0)

    def _patch_tokens(self, origins: Tensor) -> Tensor:
        """DINO tokens of each patch, [P, tokens^2, C]: cropped from the cache or encoded now."""
        stride, tokens = self.dino_teacher.stride, self.config.patch_tokens
        if self.config.dino_tokens == "cached":
            assert self.dino_cache is not None
            rows = origins[:, 1, None] // stride + torch.arange(tokens, device=origins.device)
            cols = origins[:, 2, None] // stride + torch.arange(tokens, device=origins.device)
            crops = self.dino_cache[origins[:, 0, None, None], rows[:, :, None], cols[:, None, :]]
            return crops.float().reshape(len(origins), tokens * tokens, -1)
        pixels = self.patch_pixels
        crops = torch.stack(
            [self.patch_images[v, y : y + pixels, x : x + pixels] for v, y, x in origins.tolist()]
        )
        with torch.no_grad():
            return self._encode_dino(crops).float().reshape(len(origins), tokens * tokens, -1)

    def load_clip_features(self, views: Tensor) -> ClipFeatureStore:
        """Reads Alg. 1 features of ``views`` from the content-keyed cache, computing the missing ones.

        Before computing, says how many crops that is and, after the first batch, how long it
        will take (:class:`ExtractionCost`).
        """
        cache = FeatureCache(self.config.cache_dir)
        teacher = self.teachers.clip
        settings = cache_settings(self.config.pyramid)
        keys = [cache.key(self.ray_images[view].cpu(), teacher.identity, settings) for view in views.tolist()]
        tensors: List[Optional[Dict[str, Tensor]]] = [cache.load(key) for key in keys]
        missing = [index for index, found in enumerate(tensors) if found is None]
        if missing:
            self._compute_clip_features(views, keys, missing, tensors, cache, teacher, settings)
        store = ClipFeatureStore.from_pyramids([PixelClipPyramid.from_tensors(t) for t in tensors])
        CONSOLE.print(
            f"ovs3d: CLIP window store for {len(views)} views: {store.nbytes() / 2**20:.2f} MiB "
            f"({store.nbytes() / max(len(views), 1) / 2**10:.1f} KiB per view), cache {cache.root}"
        )
        return store

    def _compute_clip_features(
        self,
        views: Tensor,
        keys: List[str],
        missing: List[int],
        tensors: List[Optional[Dict[str, Tensor]]],
        cache: FeatureCache,
        teacher: ClipTeacher,
        settings: Dict,
    ) -> None:
        """Alg. 1 for the views at ``missing`` (positions in ``views``), with a progress bar over crops."""
        height, width = self.ray_images.shape[1:3]
        crops_per_view = count_windows(height, width, self.config.pyramid)
        batch_size = self.config.clip.crops_per_batch(str(self.device))
        cost = ExtractionCost(len(missing) * crops_per_view, str(self.device), CONSOLE.print)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        cost.announce(len(missing), len(views) - len(missing), crops_per_view, batch_size, str(self.device))
        with Progress(*columns, console=CONSOLE, transient=False) as progress:
            task = progress.add_task("Pixel CLIP features (Alg. 1), crops", total=cost.total_crops)

            def on_batch(crops: int) -> None:
                progress.advance(task, crops)
                cost.on_batch(crops)

            for index in missing:
                pixels = self.ray_images[int(views[index])].permute(2, 0, 1).float().div(255.0)

                def compute(pixels: Tensor = pixels) -> Dict[str, Tensor]:
                    return extract_pyramid(pixels, teacher, self.config.pyramid, batch_size, on_batch).to_tensors()

                tensors[index] = cache.get_or_compute(keys[index], compute)

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
        batch: Dict[str, Any] = {
            "image": self.ray_images[view, y, x].float() / 255.0,
            "indices": indices,
            "num_random_rays": num_rays,
        }
        ray_bundle = self.train_ray_generator(indices)
        if not segmenting:
            return ray_bundle, batch
        batch["clip_targets"] = self.clip_store.gather(store_index, y, x)
        if self.targets.relevancy:
            batch["relevancy"] = self.relevancy[store_index, :, :, y, x].float()
        if self.targets.selection_targets:
            batch["selection_target"] = self.selection_targets[view, :, y, x].float()
        if self.targets.patches:
            patch_bundle, batch["dino_tokens"] = self._next_patches()
            ray_bundle = concat_ray_bundles(ray_bundle, patch_bundle)
        return ray_bundle, batch

    def next_eval(self, step: int) -> Tuple[RayBundle, Dict]:
        """nerfstudio's eval ray batch, which holds random rays only."""
        ray_bundle, batch = super().next_eval(step)
        batch["num_random_rays"] = len(ray_bundle)
        return ray_bundle, batch

    def _next_patches(self) -> Tuple[RayBundle, Tensor]:
        """Rays of ``num_patches`` random token-aligned patches and their DINO tokens."""
        num_views, height, width = self.patch_images.shape[:3]
        stride = self.dino_teacher.stride
        origins = sample_patch_origins(
            self.config.num_patches, num_views, height, width, self.patch_pixels, stride, self.device
        )
        indices = patch_ray_indices(origins, self.config.patch_tokens, stride, self.options.patch_rays_per_token)
        return self.patch_ray_generator(indices), self._patch_tokens(origins)


def clip_view_subset(num_views: int, fraction: float) -> Tensor:
    """Evenly spaced views that get CLIP features (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--pipeline.datamanager.clip-view-fraction {fraction}: must be in (0, 1] (1 = every view).")
    count = max(1, int(round(num_views * fraction)))
    return torch.from_numpy(np.unique(np.linspace(0, num_views - 1, count).round().astype(np.int64)))


def resized_size(width: int, height: int, factor: float) -> Tuple[int, int]:
    """Image size at 1/``factor``: whole pixels, rounded down like nerfstudio's camera rescaling."""
    return int(width / factor), int(height / factor)


def load_downscaled_images(paths: List[Path], factor: float) -> UInt8[Tensor, "N H W 3"]:
    """Reads images and resizes them by 1/``factor``: box-filtered down (area averaging, like the
    official code), bicubic up when ``factor`` < 1."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if factor != 1:
                resample = Image.BOX if factor > 1 else Image.BICUBIC
                image = image.resize(resized_size(image.width, image.height, factor), resample)
            images.append(torch.from_numpy(np.array(image)))
    return torch.stack(images)
