"""Training views for ``ovs3d-splat``: one whole camera per step with the NeRF variant's targets.

The targets are the NeRF datamanager's, computed by the same code (this class extends
:class:`~ovs3d_nerfstudio.data.datamanager.Ovs3dDataManager`): the views at ``ray_downscale``,
the Alg. 1 CLIP window store, the relevancy maps, the DINO token cache and the purity targets,
from the teachers the pipeline builds once. What changes is the batch: Gaussians render whole
images, so a step serves one view's camera and image, ``train_num_rays_per_batch`` sampled
``pixels`` of it with their CLIP, relevancy and selection targets, and the FDA patches as
``patch_cameras`` (the patch-resolution cameras cropped to each patch and scaled to
``patch_rays_per_token`` pixels per DINO token) with their ``dino_tokens``.

It also gives the Gaussians' initial points (:meth:`initial_points`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type

import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManager, Ovs3dDataManagerConfig
from ovs3d_nerfstudio.data.patches import sample_patch_origins


@dataclass
class Ovs3dSplatDataManagerConfig(Ovs3dDataManagerConfig):
    """The NeRF datamanager's options; ``train-num-rays-per-batch`` counts the pixels of the
    served view that get CLIP supervision."""

    _target: Type = field(default_factory=lambda: Ovs3dSplatDataManager)
    initial_points_seed: int = 0
    """Seed of the initial points drawn along training rays (data without sparse points)."""


class Ovs3dSplatDataManager(Ovs3dDataManager):
    """One view per step: its camera, image and sampled supervised pixels, plus FDA patch cameras."""

    config: Ovs3dSplatDataManagerConfig

    def setup_train(self):
        super().setup_train()
        if self.test_mode != "val":
            return
        self.ray_cameras = self._downscaled_cameras(self.config.ray_downscale, "ray-downscale", "divides the image size")

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        """The camera of a random view (in segmentation one with CLIP features) and its batch:
        ``image`` [H, W, 3], and in segmentation ``pixels`` [R, 2] (row, column) with their
        ``clip_targets``, ``relevancy``, ``selection_target`` and the FDA ``patch_cameras`` with
        their ``dino_tokens``."""
        self.train_count += 1
        num_views, height, width = self.ray_images.shape[:3]
        segmenting = step >= self.segmentation_start
        views = self.clip_views if segmenting else torch.arange(num_views, device=self.device)
        store_index = int(torch.randint(len(views), (1,)))
        view = int(views[store_index])
        batch: Dict = {"image": self.ray_images[view].float() / 255.0, "image_idx": view}
        camera = self.ray_cameras[view : view + 1].to(self.device)
        camera.metadata = {"cam_idx": view}
        if not segmenting:
            return camera, batch
        count = min(self.config.train_num_rays_per_batch, height * width)
        flat = torch.randperm(height * width, device=self.device)[:count]
        y, x = flat // width, flat % width
        batch["pixels"] = torch.stack([y, x], dim=-1)
        # Index tensors throughout, so the pixel dimension comes first as in the NeRF batches.
        stores, views = torch.full_like(y, store_index), torch.full_like(y, view)
        batch["clip_targets"] = self.clip_store.gather(stores, y, x)
        if self.targets.relevancy:
            batch["relevancy"] = self.relevancy[stores, :, :, y, x].float()
        if self.targets.selection_targets:
            batch["selection_target"] = self.selection_targets[views, :, y, x].float()
        if self.targets.patches:
            batch["patch_cameras"], batch["dino_tokens"] = self._next_patch_cameras()
        return camera, batch

    def _next_patch_cameras(self) -> Tuple[Cameras, Tensor]:
        """Cameras of ``num_patches`` random token-aligned patches and their DINO tokens."""
        num_views, height, width = self.patch_images.shape[:3]
        stride = self.dino_teacher.stride
        origins = sample_patch_origins(
            self.config.num_patches, num_views, height, width, self.patch_pixels, stride, self.device
        )
        return patch_cameras(self.patch_cameras, origins, self.patch_pixels, self.options.patch_rays_per_token / stride), (
            self._patch_tokens(origins)
        )

    def initial_points(self, count: int) -> Tuple[Float[Tensor, "N 3"], UInt8[Tensor, "N 3"]]:
        """Positions and colours (0-255) for the Gaussians at the start of training.

        The data's sparse points when the dataparser gives them (``points3D_xyz``); otherwise
        (3D-OVS LLFF scenes carry none) ``count`` points on random pixels of the training views at
        ray resolution, each at a depth uniform in disparity between its view's near and far
        bounds (the scene box's extent without bounds), coloured by its pixel. Reloaded runs
        (no training data loaded) get no points: the checkpoint sets the Gaussians.
        """
        metadata = self.train_dataparser_outputs.metadata
        if "points3D_xyz" in metadata:
            return metadata["points3D_xyz"].float(), metadata["points3D_rgb"].to(torch.uint8)
        if self.test_mode != "val":
            return torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.uint8)
        generator = torch.Generator().manual_seed(self.config.initial_points_seed)
        cameras = self.ray_cameras
        near_far = metadata.get("near_far")
        if near_far is None:
            extent = float((self.train_dataparser_outputs.scene_box.aabb[1] - self.train_dataparser_outputs.scene_box.aabb[0]).norm())
            near_far = torch.tensor([[0.05 * extent, extent]]).expand(len(cameras), 2)
        return points_along_rays(cameras, self.ray_images.cpu(), near_far.float(), count, generator)


def patch_cameras(cameras: Cameras, origins: Int[Tensor, "P 3"], size: int, scale: float) -> Cameras:
    """The ``size`` x ``size`` crops at ``origins`` (view, y0, x0) of ``cameras``, resampled by ``scale``."""
    views, y0, x0 = (origins[:, i].cpu() for i in range(3))
    crops = Cameras(
        camera_to_worlds=cameras.camera_to_worlds[views],
        fx=cameras.fx[views],
        fy=cameras.fy[views],
        cx=cameras.cx[views] - x0[:, None].float(),
        cy=cameras.cy[views] - y0[:, None].float(),
        width=torch.full((len(views), 1), size, dtype=torch.long),
        height=torch.full((len(views), 1), size, dtype=torch.long),
        camera_type=cameras.camera_type[views],
    )
    crops.rescale_output_resolution(scale)
    return crops.to(origins.device)


def points_along_rays(
    cameras: Cameras,
    images: UInt8[Tensor, "V H W 3"],
    near_far: Float[Tensor, "V 2"],
    count: int,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Float[Tensor, "N 3"], UInt8[Tensor, "N 3"]]:
    """``count`` points through random pixel centres of random views, at depths uniform in
    disparity between each view's bounds (near the camera, where LLFF scenes are dense), with
    the pixels' colours."""
    num_views, height, width = images.shape[:3]
    views = torch.randint(num_views, (count,), generator=generator)
    y = torch.randint(height, (count,), generator=generator)
    x = torch.randint(width, (count,), generator=generator)
    coords = torch.stack([y, x], dim=-1).float() + 0.5
    rays = cameras.generate_rays(camera_indices=views[:, None], coords=coords)
    near, far = near_far[views, 0].clamp_min(1e-3), near_far[views, 1]
    fraction = torch.rand(count, generator=generator)
    depth = 1.0 / (1.0 / near + fraction * (1.0 / far - 1.0 / near))
    # generate_rays' directions are unit vectors; the bounds are depths along the optical axis.
    axis = -cameras.camera_to_worlds[views, :3, 2]
    cosine = (rays.directions * axis).sum(-1).clamp_min(1e-3)
    points = rays.origins + rays.directions * (depth / cosine)[:, None]
    return points, images[views, y, x]
