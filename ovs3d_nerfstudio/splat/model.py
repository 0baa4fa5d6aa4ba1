"""The ``ovs3d-splat`` model: the method on 3D Gaussians, as a ``SplatfactoModel`` subclass.

Subclassed (not only a ``Model``) because nerfstudio's viewer and ``ns-export gaussian-splat``
recognise Gaussian models by that class. Of splatfacto it keeps the parameter layout
(``gauss_params`` with ``means``, ``scales``, ``quats``, ``features_dc``, ``features_rest``,
``opacities``), the densification options and the reconstruction loss (L1 + SSIM); it replaces
what breaks offline or without CUDA: LPIPS (downloads AlexNet), hard-coded ``.cuda()``,
scikit-learn's nearest neighbours, and a ``load_state_dict`` that swaps in new ``Parameter``
objects behind the optimizers' backs.

Each Gaussian also carries a CLIP latent (``clip_latent``, the input of the method's affine CLIP
head) and N_s selection logits (``selection``, Eq. 2). One rasterization renders
``[rgb | latent | selection]`` (``splat.rasterize``: gsplat on CUDA, the torch rasterizer
elsewhere). Latent and selection get no background, so ``ClipHead.render(latent, alpha)`` is the
exact rendered CLIP feature; full images are scored in the latent space (``splat.scoring``) and
512-d features are decoded only at the sampled pixels of the supervision loss.

Phases (``SplatScheduleConfig``): reconstruction trains geometry and colour with densification;
segmentation-frozen trains latent, selection and CLIP head; segmentation-joint adds the colour
back with the RGB loss. Geometry is never trained in segmentation and the strategy does not run
there. The freezing is re-applied every step because the strategy's operations hand back new
parameters that require gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
import tyro
from jaxtyping import Float
from pytorch_msssim import SSIM
from torch import Tensor, nn
from torch.nn import Parameter

from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig

from ovs3d_nerfstudio.config_checks import WEIGHT, WHOLE_NUMBER, MODEL_FLAGS, Rule, above, at_least, raise_if_any, rule_problems
from ovs3d_nerfstudio.field import ClipHead
from ovs3d_nerfstudio.model import SegmentationModel, SegmentationOptions, psnr
from ovs3d_nerfstudio.palette import colourize
from ovs3d_nerfstudio.queries import overlay, relevancy_from_cosines
from ovs3d_nerfstudio.schedule import Phase, ScheduleConfig
from ovs3d_nerfstudio.splat.gaussians import nearest_neighbour_distance
from ovs3d_nerfstudio.splat.rasterize import rasterize
from ovs3d_nerfstudio.splat.scoring import latent_space_logits

GEOMETRY_GROUPS: Tuple[str, ...] = ("means", "scales", "quats", "opacities")
"""Parameter groups that place and shape the Gaussians: trained in reconstruction only."""
COLOUR_GROUPS: Tuple[str, ...] = ("features_dc", "features_rest")
SEGMENTATION_GROUPS: Tuple[str, ...] = ("clip_latent", "selection")
PER_GAUSSIAN_GROUPS: Tuple[str, ...] = (*GEOMETRY_GROUPS, *COLOUR_GROUPS, *SEGMENTATION_GROUPS)
"""Every per-Gaussian parameter: densification grows and prunes them together."""

SPLAT_TRAINABLE: Dict[Phase, Tuple[str, ...]] = {
    Phase.RECONSTRUCTION: (*GEOMETRY_GROUPS, *COLOUR_GROUPS),
    Phase.SEGMENTATION_FROZEN: (*SEGMENTATION_GROUPS, "clip_head"),
    Phase.SEGMENTATION_JOINT: (*SEGMENTATION_GROUPS, "clip_head", *COLOUR_GROUPS),
}
"""The NeRF variant's phases on Gaussians: the colour comes back in the joint phase with the RGB
loss, as the appearance volume does there; geometry stays frozen, as the density does."""


@dataclass
class SplatScheduleConfig(ScheduleConfig):
    """Phases and learning rates of the Gaussians. Reconstruction uses splatfacto's per-group
    rates; segmentation the NeRF variant's, with per-Gaussian values (latent, selection, colour)
    taking the volumes' rates and the CLIP head the MLPs'."""

    reconstruction_lr: tyro.conf.Suppress[float] = 1e-2
    reconstruction_lr_final: tyro.conf.Suppress[float] = 1e-3
    means_lr: float = 1.6e-4
    """Reconstruction learning rate of the Gaussians' means (splatfacto's, before scene scaling)."""
    means_lr_final: float = 1.6e-6
    """Means' learning rate at the end of reconstruction (exponential decay)."""
    scales_lr: float = 5e-3
    """Reconstruction learning rate of the log-scales."""
    quats_lr: float = 1e-3
    """Reconstruction learning rate of the rotations."""
    opacities_lr: float = 5e-2
    """Reconstruction learning rate of the opacity logits."""
    colour_lr: float = 2.5e-3
    """Reconstruction learning rate of the colours (features_dc)."""

    def trainable(self, phase: Phase) -> Tuple[str, ...]:
        return SPLAT_TRAINABLE[phase]

    def is_volume(self, group: str) -> bool:
        return group in PER_GAUSSIAN_GROUPS

    def reconstruction_learning_rate(self, group: str, step: int) -> float:
        if group == "means":
            progress = step / max(self.reconstruction_steps, 1)
            return self.means_lr * (self.means_lr_final / self.means_lr) ** progress
        rates = {
            "scales": self.scales_lr,
            "quats": self.quats_lr,
            "opacities": self.opacities_lr,
            "features_dc": self.colour_lr,
            "features_rest": self.colour_lr / 20,
        }
        return rates[group]


@dataclass
class Ovs3dSplatModelConfig(SegmentationOptions, SplatfactoModelConfig):
    """3D-OVS on Gaussians. Options shared with ``ovs3d`` keep its names, defaults and meanings;
    the rest are splatfacto's (densification, SSIM weight, initialisation)."""

    _target: Type = field(default_factory=lambda: Ovs3dSplatModel)
    schedule: SplatScheduleConfig = field(default_factory=SplatScheduleConfig)
    """Phase lengths and learning rates (reconstruction, segmentation frozen, segmentation joint)."""
    latent_dim: int = 26
    """CLIP latent per Gaussian (input of the CLIP head); 3 + latent-dim + N_s <= 32 renders in one gsplat pass."""
    clip_head_layers: int = 3
    """Linear layers of the CLIP head, no activations (official: 3; 1 = a single linear map)."""
    clip_head_width: int = 128
    """Width of the CLIP head's hidden layers (official: 128)."""
    sh_degree: int = 0
    """Spherical-harmonic degree of the colour. Only 0 (view-independent colour) is supported: SH colour
    and extra channels cannot share a gsplat call."""
    num_random: int = 50000
    """Initial Gaussians when the data has no sparse points: placed along training rays between the
    views' near and far bounds (see the datamanager); with --pipeline.model.random-init, in a cube."""
    initial_opacity: float = 0.1
    """Opacity of every Gaussian at initialisation."""
    near_plane: float = 0.01
    """Gaussians nearer to the camera than this are not rendered."""
    far_plane: float = 1e10
    """Gaussians farther than this are not rendered."""
    densify_grad_thresh_plain: float = 0.0002
    """Densification threshold on plain screen-space gradients, used where absolute ones are not
    computed (CPU, or --pipeline.model.use-absgrad False): gsplat's default for plain gradients.
    --pipeline.model.densify-grad-thresh (splatfacto's 0.0008) is gsplat's value for absolute
    gradients, which are larger."""


SPLAT_MODEL_RULES: Tuple[Rule, ...] = (
    *(Rule(name, at_least(0.0), WEIGHT) for name in ("clip_loss_mult", "rda_loss_mult", "fda_lambda_pos", "fda_lambda_neg")),
    Rule("fda_temperature", above(0.0), "> 0 (the paper: 0.2)"),
    Rule("fda_shift", lambda v: isinstance(v, (int, float)) and -1.0 < v < 1.0, "in (-1, 1), a DINO cosine (the paper: 0.7)"),
    *(
        Rule(name, at_least(1), WHOLE_NUMBER.format(1))
        for name in ("fda_chunk_size", "latent_dim", "clip_head_layers", "clip_head_width", "num_random", "refine_every")
    ),
    Rule("initial_opacity", lambda v: isinstance(v, (int, float)) and 0.0 < v < 1.0, "in (0, 1)"),
    Rule("near_plane", above(0.0), "> 0"),
    *(Rule(name, above(0.0), "> 0") for name in ("densify_grad_thresh", "densify_grad_thresh_plain")),
    Rule("sh_degree", lambda v: v == 0, "0: SH colour and the CLIP latent cannot share a rasterization (view-independent colour)"),
    Rule("rasterize_mode", lambda v: v == "classic", "'classic' (the torch rasterizer and the labelled .ply follow it)"),
    Rule("use_bilateral_grid", lambda v: v is False, "False (not supported by ovs3d-splat)"),
    *(Rule(f"schedule.{name}_steps", at_least(0), WHOLE_NUMBER.format(0)) for name in ("reconstruction", "frozen", "joint")),
    *(
        Rule(f"schedule.{name}", above(0.0), "> 0")
        for name in ("means_lr", "means_lr_final", "scales_lr", "quats_lr", "opacities_lr", "colour_lr", "segmentation_decay")
    ),
    *(
        Rule(f"schedule.{name}", at_least(0.0), ">= 0")
        for name in ("frozen_lr_volume", "frozen_lr_mlp", "joint_lr_volume", "joint_lr_mlp")
    ),
)


def splat_model_problems(config: "Ovs3dSplatModelConfig") -> List[str]:
    """The splat model's and its schedule's options, as ``config_checks.model_problems`` words them."""
    problems = rule_problems(config, SPLAT_MODEL_RULES, MODEL_FLAGS)
    if config.far_plane <= config.near_plane:
        problems.append(f"{MODEL_FLAGS}far-plane {config.far_plane}: must be greater than {MODEL_FLAGS}near-plane")
    schedule = config.schedule
    if schedule.reconstruction_steps + schedule.frozen_steps + schedule.joint_steps < 1:
        problems.append(f"{MODEL_FLAGS}schedule.*-steps: all three phases have 0 steps; give at least one")
    return problems


def world_to_camera(camera_to_worlds: Float[Tensor, "C 3 4"]) -> Float[Tensor, "C 4 4"]:
    """gsplat's view matrices (OpenCV axes: x right, y down, z forward) of nerfstudio's camera
    poses (OpenGL axes: y up, looking down -z). Plain torch: splatfacto's ``get_viewmat`` is
    ``torch.compile``d, which costs tens of seconds on the first CPU call."""
    rotation = camera_to_worlds[:, :3, :3] * camera_to_worlds.new_tensor([1.0, -1.0, -1.0])
    translation = camera_to_worlds[:, :3, 3:]
    viewmats = torch.zeros(len(camera_to_worlds), 4, 4, dtype=camera_to_worlds.dtype, device=camera_to_worlds.device)
    viewmats[:, :3, :3] = rotation.transpose(1, 2)
    viewmats[:, :3, 3:] = -rotation.transpose(1, 2) @ translation
    viewmats[:, 3, 3] = 1.0
    return viewmats


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


class Ovs3dSplatModel(SegmentationModel, SplatfactoModel):
    """Renders RGB, CLIP latents and selections of Gaussians; scores them against the labels.

    ``metadata`` and ``teachers`` as for :class:`~ovs3d_nerfstudio.model.Ovs3dModel`;
    ``seed_points`` (positions, colours in [0, 255]) come from the datamanager's
    ``initial_points``.
    """

    config: Ovs3dSplatModelConfig

    def populate_modules(self):
        raise_if_any(splat_model_problems(self.config))
        self.setup_segmentation()
        self.gauss_params = nn.ParameterDict(self.initial_gaussians())
        self.clip_head = self._clip_head(self.text_features.shape[-1])
        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.crop_box: Optional[OrientedBox] = None
        self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])  # viser's background, as splatfacto
        self.strategy = DefaultStrategy(
            prune_opa=self.config.cull_alpha_thresh,
            grow_grad2d=self.config.densify_grad_thresh,
            grow_scale3d=self.config.densify_size_thresh,
            grow_scale2d=self.config.split_screen_size,
            prune_scale3d=self.config.cull_scale_thresh,
            prune_scale2d=self.config.cull_screen_size,
            refine_scale2d_stop_iter=self.config.stop_screen_size_at,
            refine_start_iter=self.config.warmup_length,
            refine_stop_iter=self.config.stop_split_at,
            reset_every=self.config.reset_alpha_every * self.config.refine_every,
            refine_every=self.config.refine_every,
            pause_refine_after_reset=self.num_train_data + self.config.refine_every,
            absgrad=self.config.use_absgrad,
            revised_opacity=False,
            verbose=True,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}

    def initial_gaussians(self) -> Dict[str, Parameter]:
        """Gaussians at the seed points (or, with ``random-init`` or no points, ``num-random`` in a
        ``random-scale`` cube, as splatfacto): scale from the three nearest neighbours, identity
        rotation, ``initial-opacity``, the points' colours, zero latents and selection logits."""
        if self.seed_points is not None and len(self.seed_points[0]) > 0 and not self.config.random_init:
            means, colours = self.seed_points[0].float(), self.seed_points[1].float() / 255.0
        else:
            generator = torch.Generator().manual_seed(0)
            means = (torch.rand(self.config.num_random, 3, generator=generator) - 0.5) * self.config.random_scale
            colours = torch.rand(self.config.num_random, 3, generator=generator)
        count = len(means)
        distance = nearest_neighbour_distance(means, 3).clamp_min(1e-4)
        quats = torch.zeros(count, 4)
        quats[:, 0] = 1.0
        return {
            "means": Parameter(means.clone()),
            "scales": Parameter(torch.log(distance)[:, None].repeat(1, 3)),
            "quats": Parameter(quats),
            "features_dc": Parameter(_logit(colours.clamp(1e-3, 1 - 1e-3))),
            "features_rest": Parameter(torch.zeros(count, 0, 3)),
            "opacities": Parameter(_logit(torch.full((count, 1), self.config.initial_opacity))),
            "clip_latent": Parameter(torch.zeros(count, self.config.latent_dim)),
            "selection": Parameter(torch.zeros(count, self.num_scales)),
        }

    def _clip_head(self, dim: int) -> ClipHead:
        return ClipHead(self.config.latent_dim, dim, self.config.clip_head_layers, self.config.clip_head_width)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        """Loads a checkpoint with any number of Gaussians into the same ``Parameter`` objects,
        resized in place: optimizers built before the load stay bound to the live tensors
        (splatfacto's version replaces them, so a resumed run would train dead copies)."""
        for name, param in self.gauss_params.items():
            saved = state_dict.get(f"gauss_params.{name}")
            if saved is not None and saved.shape != param.shape:
                param.data = torch.empty(saved.shape, dtype=param.dtype, device=param.device)
        return nn.Module.load_state_dict(self, state_dict, strict=strict, **kwargs)

    # ------------------------------------------------------------------ schedule
    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        return {name: [self.gauss_params[name]] for name in PER_GAUSSIAN_GROUPS}

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = {**self.get_gaussian_param_groups(), "clip_head": list(self.clip_head.parameters())}
        self.camera_optimizer.get_param_groups(param_groups=groups)
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        optimizers = training_callback_attributes.optimizers

        def before_step(step: int) -> None:
            self.optimizers = optimizers.optimizers
            self.use_densification_gradients()
            self.enter_step(step, optimizers.schedulers)

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before_step),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.step_post_backward),
        ]

    def use_densification_gradients(self) -> None:
        """Absolute screen-space gradients where gsplat computes them (its CUDA backward, with
        use-absgrad), plain ones elsewhere, each with its own threshold."""
        self.strategy.absgrad = self.config.use_absgrad and self.device.type == "cuda"
        self.strategy.grow_grad2d = (
            self.config.densify_grad_thresh if self.strategy.absgrad else self.config.densify_grad_thresh_plain
        )

    @property
    def densifying(self) -> bool:
        """The strategy runs in reconstruction training steps only: segmentation keeps the geometry."""
        return self.training and self.phase is Phase.RECONSTRUCTION

    def step_post_backward(self, step: int) -> None:
        if self.densifying and hasattr(self, "info"):
            self.strategy.step_post_backward(
                params=self.gauss_params, optimizers=self.optimizers, state=self.strategy_state, step=step,
                info=self.info, packed=False,
            )

    def _get_downscale_factor(self) -> int:
        # Segmentation supervises pixels of the full served view: only reconstruction starts coarse.
        return super()._get_downscale_factor() if self.densifying else 1

    # ----------------------------------------------------------------- rendering
    def render(self, cameras: Cameras, segmentation: bool, background: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Rasterizes ``cameras`` (one size): ``rgb`` over ``background``, ``accumulation``,
        ``depth`` and, with ``segmentation``, the rendered ``clip_latent`` and ``selection``
        (Eq. 2), each [C, H, W, X]; ``info`` is the rasterizer's meta (densification reads it)."""
        p = self.gauss_params
        keep = None
        if self.crop_box is not None and not self.training:
            keep = self.crop_box.within(p["means"]).squeeze(-1)
        values = {name: (param if keep is None else param[keep]) for name, param in p.items()}
        channels = [torch.sigmoid(values["features_dc"])]
        if segmentation:
            selection_logits = values["selection"]
            if self.options.selection_activation == "sigmoid":
                selection_logits = torch.sigmoid(selection_logits)
            channels += [values["clip_latent"], selection_logits]
        colours = torch.cat(channels, dim=-1)
        width, height = int(cameras.width[0, 0]), int(cameras.height[0, 0])
        viewmats = world_to_camera(cameras.camera_to_worlds.to(self.device))
        rendered, alpha, info = rasterize(
            values["means"], values["quats"], torch.exp(values["scales"]), torch.sigmoid(values["opacities"]).squeeze(-1),
            colours, viewmats, cameras.get_intrinsics_matrices().to(self.device), width, height,
            near_plane=self.config.near_plane, far_plane=self.config.far_plane, render_mode="RGB+ED",
            packed=not self.densifying, absgrad=self.strategy.absgrad,  # the strategy reads the non-packed layout
        )  # fmt: skip
        if background is None:
            background = self._get_background_color()
        outputs = {
            "rgb": torch.clamp(rendered[..., :3] + (1 - alpha) * background, 0.0, 1.0),
            "accumulation": alpha,
            "depth": torch.where(alpha > 0, rendered[..., -1:], rendered[..., -1:].detach().max()),
            "info": info,
        }
        if segmentation:
            latent_end = 3 + self.config.latent_dim
            outputs["clip_latent"] = rendered[..., 3:latent_end]
            outputs["selection"] = self.render_selection(rendered[..., latent_end:-1])
        return outputs

    def get_outputs(self, camera: Cameras) -> Dict[str, Tensor]:
        """One camera's images ([H, W, X]); in segmentation also the class ``logits`` (Eq. 4,
        scored in the latent space), ``labels`` (first: the viewer shows it by default) and
        ``class_probabilities``; a free query adds ``query_relevancy``."""
        if not isinstance(camera, Cameras):
            raise TypeError(f"ovs3d-splat renders cameras, not {type(camera).__name__}")
        if camera.shape[0] != 1:
            raise ValueError(f"get_outputs renders one camera at a time, got {camera.shape[0]}")
        scale = self._get_downscale_factor()
        camera = camera.to(self.device)
        if self.training:
            camera = Cameras(
                camera_to_worlds=self.camera_optimizer.apply_to_camera(camera), fx=camera.fx, fy=camera.fy,
                cx=camera.cx, cy=camera.cy, width=camera.width, height=camera.height, camera_type=camera.camera_type,
            )  # fmt: skip
        camera.rescale_output_resolution(1 / scale)
        segmenting = not (self.training and self.phase is Phase.RECONSTRUCTION)
        rendered = self.render(camera, segmentation=segmenting)
        camera.rescale_output_resolution(scale)
        self.info = rendered.pop("info")
        if self.densifying:
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info)
        images = {name: value[0] for name, value in rendered.items()}
        background = self._get_background_color()
        outputs: Dict[str, Tensor] = {}
        if segmenting:
            logits, label_images = self.label_outputs(images["clip_latent"], images["accumulation"])
            outputs.update(label_images, selection=images["selection"])
            if self.training:  # the losses' inputs, not images to display
                outputs.update(clip_latent=images["clip_latent"], logits=logits)
        outputs.update(rgb=images["rgb"], depth=images["depth"], accumulation=images["accumulation"])
        outputs["background"] = background if self.training else background.expand(*images["rgb"].shape[:2], 3)
        return outputs

    def label_outputs(self, latent: Tensor, alpha: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Class cosines of rendered latents (no [H, W, D] feature is built), and the images made
        from them: label map, probabilities and, with a free query, its relevancy."""
        text, colours = (self.text_features, self.label_colours) if self.training else (
            self.display_text_features, self.display_colours
        )  # fmt: skip
        logits = latent_space_logits(latent, alpha, self.clip_head, text)
        outputs = {
            "labels": colourize(logits.argmax(dim=-1), colours),
            "class_probabilities": torch.softmax(logits, dim=-1),
        }
        if not self.training and self._query is not None:
            cosines = latent_space_logits(latent, alpha, self.clip_head, self._query)
            outputs["query_relevancy"] = relevancy_from_cosines(cosines)
        return logits, outputs

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: Optional[OrientedBox] = None) -> Dict[str, Tensor]:
        """Adds ``labels_overlay``: labels over RGB with boundaries."""
        outputs = super().get_outputs_for_camera(camera, obb_box=obb_box)
        if "class_probabilities" in outputs:
            label_ids = outputs["class_probabilities"].argmax(dim=-1)
            outputs["labels_overlay"] = overlay(outputs["rgb"], outputs["labels"], label_ids)
        return outputs

    @torch.no_grad()
    def class_probabilities_along_ray(self, origin: Tensor, direction: Tensor) -> Tensor:
        """The class probabilities where a ray (the viewer's click) meets the Gaussians: a
        one-pixel pinhole camera looking down the ray."""
        direction = F.normalize(direction.float(), dim=-1)
        helper = direction.new_tensor([0.0, 0.0, 1.0] if abs(float(direction[2])) < 0.9 else [1.0, 0.0, 0.0])
        right = F.normalize(torch.linalg.cross(direction, helper), dim=-1)
        up = torch.linalg.cross(right, direction)
        # nerfstudio cameras look down -z with +y up (OpenGL).
        pose = torch.stack([right, up, -direction, origin.float().to(direction.device)], dim=-1)
        camera = Cameras(
            camera_to_worlds=pose[None], fx=1e4, fy=1e4, cx=0.5, cy=0.5, width=1, height=1,
            camera_type=CameraType.PERSPECTIVE,
        )  # fmt: skip
        was_training = self.training
        self.eval()
        try:
            return self.get_outputs_for_camera(camera)["class_probabilities"][0, 0]
        finally:
            self.train(was_training)

    # -------------------------------------------------------------------- losses
    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        gt = self.get_gt_img(batch["image"])
        return {"psnr": psnr(outputs["rgb"], gt), "gaussian_count": torch.tensor(float(self.num_points))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        """Loss terms of the current phase, each under its own name: splatfacto's ``main_loss``
        (L1 + SSIM) outside the frozen phase; in segmentation ``clip``, ``rda`` (and the
        DINO-purity ``selection``) at the batch's sampled ``pixels``, and ``fda_pos`` /
        ``fda_neg`` on the batch's ``patch_cameras``, rendered here because the pipeline hands
        the model one camera."""
        phase = self.phase if self.training else Phase.SEGMENTATION_JOINT
        loss_dict: Dict[str, Tensor] = {}
        if phase is not Phase.SEGMENTATION_FROZEN:
            loss_dict.update(SplatfactoModel.get_loss_dict(self, outputs, batch, metrics_dict))
        if phase is Phase.RECONSTRUCTION or "clip_targets" not in batch or "clip_latent" not in outputs:
            return loss_dict
        row, column = batch["pixels"].to(self.device).unbind(-1)
        alpha = outputs["accumulation"][row, column]
        clip = self.clip_head.render(outputs["clip_latent"][row, column], alpha)
        loss_dict.update(self.supervision_losses(clip, outputs["logits"][row, column], outputs["selection"][row, column], batch))
        fda_on = phase is Phase.SEGMENTATION_JOINT or self.config.fda_start == "frozen"
        if self.config.use_fda and fda_on and "patch_cameras" in batch:
            loss_dict["fda_pos"], loss_dict["fda_neg"] = self.fda_terms(batch["patch_cameras"], batch["dino_tokens"])
        return loss_dict

    def fda_terms(self, patch_cameras: Cameras, dino_tokens: Float[Tensor, "P T Cd"]) -> Tuple[Tensor, Tensor]:
        """Eq. 14 on patch cameras: rendered latent and alpha average-pooled to the token grid,
        then scored (pooling is linear and the head affine, so the pooled CLIP features are exact)."""
        rendered = self.render(patch_cameras.to(self.device), segmentation=True)
        latent, alpha = rendered["clip_latent"], rendered["accumulation"]
        num_patches, height, width = latent.shape[:3]
        side = math.isqrt(dino_tokens.shape[1])
        if side * side != dino_tokens.shape[1] or height % side or width % side:
            raise ValueError(f"{dino_tokens.shape[1]} tokens do not tile a {height}x{width} patch as a square grid")

        def pool(x: Tensor) -> Tensor:
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), (height // side, width // side))
            return pooled.flatten(2).transpose(1, 2)  # [P, tokens, channels], row-major like the DINO grid

        logits = latent_space_logits(pool(latent), pool(alpha), self.clip_head, self.text_features)
        return self.fda_from_logits(logits, dino_tokens.to(self.device))

    # ---------------------------------------------------------------- evaluation
    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """PSNR and SSIM (no LPIPS: it downloads AlexNet), and both label metric protocols on annotated views."""
        gt_rgb = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        predicted = outputs["rgb"]
        metrics: Dict[str, float] = {
            "psnr": float(psnr(predicted, gt_rgb)),
            "ssim": float(self.ssim(gt_rgb.permute(2, 0, 1)[None], predicted.permute(2, 0, 1)[None])),
        }
        images = {"img": torch.cat([gt_rgb, predicted], dim=1), "labels": outputs["labels"]}
        if "gt_labels" in batch:
            metrics.update(self.label_metrics(outputs["class_probabilities"].argmax(dim=-1), batch["gt_labels"]))
            images["labels_overlay"] = outputs["labels_overlay"]
        return metrics, images

    @torch.no_grad()
    def gaussian_labels(self) -> Tensor:
        """Each Gaussian's label: Eq. 4's argmax for its own CLIP feature ``head(latent)`` against
        the display labels."""
        latent = self.gauss_params["clip_latent"]
        logits = latent_space_logits(latent, torch.ones_like(latent[:, :1]), self.clip_head, self.display_text_features)
        return logits.argmax(dim=-1)
