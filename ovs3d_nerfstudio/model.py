"""The ``ovs3d`` model: rendering, the staged schedule, the loss dict and label outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.spatial_distortions import SceneContraction
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.model_components.losses import MSELoss, distortion_loss, interlevel_loss
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio import losses
from ovs3d_nerfstudio.data.patches import pool_patch_rays
from ovs3d_nerfstudio.evaluation import class_count_metrics, paper_metrics, segmentation_metrics
from ovs3d_nerfstudio.field import ClipHead, FieldOutput, Ovs3dField
from ovs3d_nerfstudio.data.labels import validate_labels
from ovs3d_nerfstudio.palette import colourize, palette
from ovs3d_nerfstudio.queries import CANONICAL_NEGATIVES, overlay, query_relevancy
from ovs3d_nerfstudio.schedule import Phase, ScheduleConfig, align_phase_schedulers
from ovs3d_nerfstudio.teachers.shared import Teachers
from ovs3d_nerfstudio.variants import VariantName, VariantOptions, resolve_options


@dataclass
class SegmentationOptions:
    """The method's options shared by both variants (``ovs3d`` and ``ovs3d-splat``), with one
    meaning and one command-line name in both. Loss weights and schedule default to the paper's."""

    labels: Tuple[str, ...] = ()
    """Text labels to segment; when given they override the dataset's labels file."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Phase lengths and learning rates (reconstruction, segmentation frozen, segmentation joint)."""
    clip_loss_mult: float = 1.0
    """Weight of the CLIP half of the supervision loss (Eq. 3)."""
    clip_loss: Literal["cosine", "cosine+centred"] = "cosine"
    """The CLIP half of the supervision loss: Eq. 3's cosine, or, beyond the paper, plus the cosine
    of the features with the batch's mean target removed (losses.centred_clip_supervision_loss)."""
    variant: VariantName = "default"
    """Option set: 'paper' (the printed equations), 'official' (what the official code computes,
    which produced the paper's numbers) or 'default' (this project's choice, by measurement;
    docs/benchmarks.md). Options below marked 'variant' follow it unless given explicitly."""
    use_selection: bool = True
    """Learn the selection volume (Eq. 2); False averages the scales instead (ablation, Table 4)."""
    selection_activation: Optional[Literal["none", "sigmoid"]] = None
    """Variant option. Per-sample selection logits rendered as they are (paper) or through a sigmoid,
    which bounds the rendered logits to [0, 1] and the selection to a soft preference (official)."""
    selection_training: Optional[Literal["supervision", "dino-purity"]] = None
    """Variant option. What trains the selection volume: Eq. 3's gradient (paper and official), or,
    beyond both, a per-ray target of the scales whose CLIP windows DINO puts on the ray's object
    (features/scale_purity.py); the supervision and RDA losses then use the selection without
    training it."""
    normalize_scale_targets: Optional[bool] = None
    """Variant option. L2-normalise each scale's CLIP target before the selection mixes them (official)."""
    use_rda: bool = True
    """Relevancy-Distribution Alignment loss (Eqs. 5-8); False is the 'w/o RDA' ablation (Table 2)."""
    rda_loss_mult: float = 1.0
    """Weight of the RDA loss (official: relevancy 1.0)."""
    rda_logits: Optional[Literal["cosine", "dot"]] = None
    """Variant option. P(r) of RDA from Eq. 4's cosines (paper), or from the unnormalised rendered
    feature's dot products with the unit text features (official: the feature norm sharpens P)."""
    rda_target: Optional[Literal["softmax", "sharpened"]] = None
    """Variant option. RDA's target: softmax(R_bar) as printed (paper and official), or sharpened with
    Eq. 10's tau (--pipeline.model.fda-temperature) after mapping R_bar from [0, 1] onto the cosines'
    [-1, 1]: softmax((2 R_bar - 1) / tau) (not in the paper; the printed target can prefer a class at
    most e-fold, too weak to move a label)."""
    use_fda: bool = True
    """Feature-Distribution Alignment loss (Eqs. 9-14); False is the 'w/o FDA' ablation (Table 2)."""
    fda_start: Literal["frozen", "joint"] = "frozen"
    """Segmentation phase from which FDA is applied (paper and official: from the first segmentation step)."""
    fda_lambda_pos: float = 200.0
    """Weight of the similar-DINO-feature part of FDA (lambda_pos, Eq. 14)."""
    fda_lambda_neg: float = 0.2
    """Weight of the dissimilar part (lambda_neg; the paper uses 0.18-0.22 on some scenes)."""
    fda_divergence: Optional[Literal["js", "kl"]] = None
    """Variant option. Corr_D of FDA: Eq. 11's Jensen-Shannon (paper) or KL(P'_hw || P'_ij) (official)."""
    fda_rebalance: bool = True
    """False uses lambda_pos for both parts: the 'w/o re-balancing' ablation (Table 2)."""
    fda_temperature: float = 0.2
    """tau of the sharpened probabilities (Eq. 10)."""
    fda_shift: float = 0.7
    """b, the DINO similarity above which two tokens count as similar (Eqs. 12-13)."""
    fda_chunk_size: int = 128
    """Rows of the pairwise JS correlation computed at once (memory bound of the FDA loss)."""

    def variant_options(self) -> VariantOptions:
        """The variant's options with every explicitly given one in its place."""
        return resolve_options(
            self.variant,
            rda_logits=self.rda_logits,
            fda_divergence=self.fda_divergence,
            normalize_scale_targets=self.normalize_scale_targets,
            selection_activation=self.selection_activation,
            selection_training=self.selection_training,
            rda_target=self.rda_target,
        )


@dataclass
class Ovs3dModelConfig(SegmentationOptions, ModelConfig):
    """3D-OVS on a nerfacto-style field. Loss weights and schedule default to the paper's."""

    _target: Type = field(default_factory=lambda: Ovs3dModel)
    near_plane: float = 0.05
    """How far along the ray to start sampling."""
    far_plane: float = 1000.0
    """How far along the ray to stop sampling."""
    background_color: Literal["random", "last_sample", "black", "white"] = "last_sample"
    """Background colour for RGB rendering."""
    num_levels: int = 16
    """Hash grid levels of the density and appearance volumes."""
    base_res: int = 16
    """Coarsest hash grid resolution."""
    max_res: int = 2048
    """Finest hash grid resolution."""
    log2_hashmap_size: int = 19
    """log2 of the hash table size of the density and appearance volumes."""
    features_per_level: int = 2
    """Hash grid features per level."""
    hidden_dim: int = 64
    """Width of the volumes' small decoders."""
    appearance_dim: int = 32
    """Dimension of the shared appearance features (input of the RGB and CLIP heads)."""
    hidden_dim_color: int = 64
    """Width of the RGB head."""
    clip_head_layers: int = 3
    """Linear layers of the CLIP head, no activations (official: 3; 1 = a single linear map)."""
    clip_head_width: int = 128
    """Width of the CLIP head's hidden layers (official: 128)."""
    appearance_embedding_dim: int = 32
    """Per-image appearance embedding of the RGB head."""
    selection_num_levels: int = 8
    """Hash grid levels of the selection volume."""
    selection_max_res: int = 512
    """Finest resolution of the selection volume."""
    selection_log2_hashmap_size: int = 17
    """log2 of the hash table size of the selection volume."""
    num_proposal_samples_per_ray: Tuple[int, ...] = (256, 96)
    """Samples per ray for each proposal network."""
    num_nerf_samples_per_ray: int = 48
    """Samples per ray for the field."""
    num_proposal_iterations: int = 2
    """Number of proposal network iterations."""
    proposal_update_every: int = 5
    """Update the proposal sampler every n steps after the warm-up."""
    proposal_warmup: int = 5000
    """Steps over which the proposal update interval grows from 1 to proposal_update_every."""
    proposal_net_args_list: List[Dict] = field(
        default_factory=lambda: [
            {"hidden_dim": 16, "log2_hashmap_size": 17, "num_levels": 5, "max_res": 128, "use_linear": False},
            {"hidden_dim": 16, "log2_hashmap_size": 17, "num_levels": 5, "max_res": 256, "use_linear": False},
        ]
    )
    """Arguments of the proposal density fields."""
    proposal_weights_anneal_slope: float = 10.0
    """Slope of the proposal weight annealing."""
    proposal_weights_anneal_max_num_iters: int = 1000
    """Steps of the proposal weight annealing."""
    interlevel_loss_mult: float = 1.0
    """Proposal (interlevel) loss weight during reconstruction."""
    distortion_loss_mult: float = 0.002
    """Distortion loss weight during reconstruction."""
    implementation: Literal["tcnn", "torch"] = "tcnn"
    """tcnn uses tiny-cuda-nn when installed and falls back to torch (CPU works) otherwise."""


class SegmentationModel:
    """What both variants' models share: labels and text features, display labels and free
    queries (viewer, ns-render), the phase of each step, and the losses computed from rendered
    CLIP features, class cosines and selections. Mixed into a nerfstudio ``Model`` whose config
    is a :class:`SegmentationOptions`; the model provides ``_clip_head`` and ``get_param_groups``."""

    config: SegmentationOptions

    def setup_segmentation(self) -> None:
        """Variant options, labels, text features, palette and the shared teachers, from the
        pipeline's ``metadata`` and ``teachers`` (``populate_modules`` calls it)."""
        self.options: VariantOptions = self.config.variant_options()
        metadata = self.kwargs["metadata"]
        self.labels: List[str] = list(metadata["labels"])
        # Without text features (a run being reloaded) D is unknown until the checkpoint is read.
        text = metadata.get("text_features", torch.zeros(len(self.labels), 1)).float()
        self.register_buffer("text_features", F.normalize(text, dim=-1))
        self.num_scales = int(metadata["num_scales"])
        self.register_buffer("label_colours", palette(len(self.labels)))
        self.teachers: Optional[Teachers] = self.kwargs.get("teachers")
        self.display_labels: List[str] = list(self.labels)
        self._display_text: Optional[Tensor] = None
        self._query: Optional[Tensor] = None
        self.eval_view_listeners: List[Callable[[Tensor, Tensor], None]] = []
        """Called with (predicted, ground-truth) label maps on the CPU for every annotated view
        that ns-eval's code path scores (:meth:`get_image_metrics_and_images`)."""
        self.step = 0
        self.phase = self.config.schedule.phase(0)

    @property
    def normalize_scale_targets(self) -> bool:
        return self.options.normalize_scale_targets

    # ------------------------------------------------------------ display labels
    def match_checkpoint(self, state: Dict[str, Tensor]) -> None:
        """Sizes the text buffer and CLIP head like a checkpoint's before it is loaded."""
        dim = state["_model.text_features"].shape[-1]
        if self.text_features.shape[-1] != dim:
            self.text_features = torch.zeros(len(self.labels), dim, device=self.device)
            self.clip_head = self._clip_head(dim).to(self.device)

    def encode_text(self, texts: List[str]) -> Tensor:
        if self.teachers is None:
            raise RuntimeError("no teachers were passed to the model: it cannot encode new text")
        with torch.no_grad():
            return F.normalize(self.teachers.clip.encode_text(texts).float(), dim=-1).to(self.device)

    def set_display_labels(self, labels: List[str]) -> None:
        """Re-scores rendered features against new labels (no retraining; the losses keep the old ones)."""
        labels = validate_labels(labels, "the viewer's label list")
        self._display_text = None if labels == self.labels else self.encode_text(labels)
        self.display_labels = labels

    def set_query(self, phrase: Optional[str]) -> None:
        """A free phrase adds a ``query_relevancy`` output; None removes it."""
        self._query = None if phrase is None else self.encode_text([phrase, *CANONICAL_NEGATIVES])

    @property
    def display_text_features(self) -> Tensor:
        return self.text_features if self._display_text is None else self._display_text.to(self.device)

    @property
    def display_colours(self) -> Tensor:
        return palette(len(self.display_labels)).to(self.device)

    def enter_step(self, step: int, schedulers: Optional[Mapping[str, Any]] = None) -> None:
        """Sets the phase and the frozen groups for ``step``, and moves the trainer's phase
        ``schedulers`` (``schedule.PhaseScheduler``) to it where they are not there.

        A pure function of the step, so a resumed run lands in the right phase with the phase's
        learning rates, whether or not the checkpoint held scheduler state.
        """
        self.step = step
        phase = self.config.schedule.phase(step)
        if phase is not self.phase or step == 0:
            CONSOLE.print(f"[bold green]ovs3d: step {step}: phase '{phase.value}'")
        self.phase = phase
        for group, params in self.get_param_groups().items():
            trainable = group in self.config.schedule.trainable(phase)
            for param in params:
                param.requires_grad_(trainable)
        moved = align_phase_schedulers(schedulers or {}, step)
        if moved and not getattr(self, "_rates_moved", False):
            self._rates_moved = True
            CONSOLE.print(f"ovs3d: learning rates of {', '.join(moved)} set for step {step} (no scheduler state for this step was restored)")

    @torch.no_grad()
    def class_probabilities_along_ray(self, origin: Tensor, direction: Tensor) -> Tensor:
        """The class probabilities [C] of one rendered ray (the viewer's click readout); models
        that render cameras rather than rays override it."""
        device = self.device
        bundle = RayBundle(
            origins=origin.float().to(device)[None],
            directions=F.normalize(direction.float().to(device), dim=-1)[None],
            pixel_area=torch.full((1, 1), 1e-6, device=device),
            camera_indices=torch.zeros((1, 1), dtype=torch.long, device=device),
        )
        was_training = self.training
        self.eval()
        try:
            return self(bundle)["class_probabilities"][0]
        finally:
            self.train(was_training)

    def render_selection(self, rendered_logits: Tensor) -> Tensor:
        """Eq. 2: softmax of the rendered selection logits (uniform for the no-selection ablation)."""
        if not self.config.use_selection:
            return torch.full_like(rendered_logits, 1.0 / self.num_scales)
        return torch.softmax(rendered_logits, dim=-1)

    def supervision_losses(self, clip: Tensor, logits: Tensor, selection: Tensor, batch: Dict) -> Dict[str, Tensor]:
        """Eq. 3 (``clip``), RDA (``rda``) and the DINO-purity ``selection`` loss of the sampled
        rays or pixels: their CLIP features [R, D], class cosines [R, C] and selection [R, N_s],
        against the batch's targets."""
        loss_dict: Dict[str, Tensor] = {}
        if "selection_target" in batch:
            loss_dict["selection"] = losses.selection_loss(selection, batch["selection_target"].to(self.device))
            selection = selection.detach()
        supervision = losses.clip_supervision_loss if self.config.clip_loss == "cosine" else losses.centred_clip_supervision_loss
        loss_dict["clip"] = self.config.clip_loss_mult * supervision(
            clip, batch["clip_targets"], selection, normalize_scales=self.normalize_scale_targets
        )
        if self.config.use_rda and "relevancy" in batch:
            relevancy = losses.selected_relevancy(batch["relevancy"], selection)
            if self.options.rda_logits == "dot":
                logits = losses.dot_product_logits(clip, self.text_features)
            sharpening = self.config.fda_temperature if self.options.rda_target == "sharpened" else None
            loss_dict["rda"] = self.config.rda_loss_mult * losses.rda_loss(logits, relevancy, sharpening)
        return loss_dict

    def fda_from_logits(self, logits: Tensor, dino_tokens: Tensor) -> Tuple[Tensor, Tensor]:
        """Eq. 14's two parts from the class cosines of each patch's tokens [P, T, C], with the
        variant's divergence and the configured weights."""
        weights = dict(
            tau=self.config.fda_temperature,
            shift=self.config.fda_shift,
            lambda_pos=self.config.fda_lambda_pos,
            lambda_neg=self.config.fda_lambda_neg if self.config.fda_rebalance else self.config.fda_lambda_pos,
        )
        if self.options.fda_divergence == "kl":
            return losses.fda_loss_kl(logits, dino_tokens, **weights)
        return losses.fda_loss(logits, dino_tokens, chunk_size=self.config.fda_chunk_size, **weights)

    def label_metrics(self, predicted: Tensor, ground_truth: Tensor) -> Dict[str, float]:
        """Both metric protocols of a predicted label map against an annotated view's; the
        ``eval_view_listeners`` get both maps."""
        ground_truth = ground_truth.to(self.device)
        metrics = segmentation_metrics(predicted, ground_truth, len(self.labels))
        metrics.update(class_count_metrics(predicted, ground_truth, self.display_labels))
        metrics.update(paper_metrics(predicted, ground_truth, self.display_labels))
        for listener in self.eval_view_listeners:
            listener(predicted.cpu(), ground_truth.cpu())
        return metrics


class Ovs3dModel(SegmentationModel, Model):
    """Renders RGB, CLIP features and scale selection; scores them against the text labels.

    The dataset metadata provides ``labels`` (list of str), ``num_scales`` (N_s) and, for
    training, ``text_features`` ([C, D] CLIP text embeddings); a reloaded run takes its text
    features from the checkpoint instead (see :meth:`match_checkpoint`). The ``teachers`` the
    pipeline passes (shared with the datamanager) encode new text: viewer label edits and free
    queries.

    Training always scores the trained labels; rendering for display (viewer, ns-render,
    ns-eval) scores the *display* labels, which equal the trained ones until edited.
    """

    config: Ovs3dModelConfig

    def populate_modules(self):
        super().populate_modules()
        self.setup_segmentation()
        contraction = SceneContraction(order=float("inf"))
        self.field = Ovs3dField(
            self.scene_box.aabb,
            num_images=self.num_train_data,
            num_scales=self.num_scales,
            spatial_distortion=contraction,
            num_levels=self.config.num_levels,
            base_res=self.config.base_res,
            max_res=self.config.max_res,
            log2_hashmap_size=self.config.log2_hashmap_size,
            features_per_level=self.config.features_per_level,
            hidden_dim=self.config.hidden_dim,
            appearance_dim=self.config.appearance_dim,
            hidden_dim_color=self.config.hidden_dim_color,
            appearance_embedding_dim=self.config.appearance_embedding_dim,
            selection_num_levels=self.config.selection_num_levels,
            selection_max_res=self.config.selection_max_res,
            selection_log2_hashmap_size=self.config.selection_log2_hashmap_size,
            implementation=self.config.implementation,
        )
        # Affine, so it is applied after rendering (exact; see field.py).
        self.clip_head = self._clip_head(self.text_features.shape[-1])

        self.proposal_networks = nn.ModuleList(
            HashMLPDensityField(
                self.scene_box.aabb,
                spatial_distortion=contraction,
                **self.config.proposal_net_args_list[min(i, len(self.config.proposal_net_args_list) - 1)],
                implementation=self.config.implementation,
            )
            for i in range(self.config.num_proposal_iterations)
        )
        self.density_fns = [network.density_fn for network in self.proposal_networks]

        def update_schedule(step):
            return np.clip(
                np.interp(step, [0, self.config.proposal_warmup], [0, self.config.proposal_update_every]),
                1,
                self.config.proposal_update_every,
            )

        self.proposal_sampler = ProposalNetworkSampler(
            num_nerf_samples_per_ray=self.config.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=self.config.num_proposal_samples_per_ray,
            num_proposal_network_iterations=self.config.num_proposal_iterations,
            single_jitter=True,
            update_sched=update_schedule,
        )
        self.collider = NearFarCollider(near_plane=self.config.near_plane, far_plane=self.config.far_plane)
        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="median")
        self.rgb_loss = MSELoss()

    def _clip_head(self, dim: int) -> ClipHead:
        return ClipHead(self.config.appearance_dim, dim, self.config.clip_head_layers, self.config.clip_head_width)

    # ------------------------------------------------------------------ schedule
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "proposal_networks": list(self.proposal_networks.parameters()),
            "density": list(self.field.density_volume.parameters()),
            "appearance": list(self.field.appearance_volume.parameters()),
            "rgb_head": list(self.field.rgb_head.parameters()) + list(self.field.embedding_appearance.parameters()),
            "selection": list(self.field.selection_volume.parameters()),
            "clip_head": list(self.clip_head.parameters()),
        }

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        anneal_iters = self.config.proposal_weights_anneal_max_num_iters
        slope = self.config.proposal_weights_anneal_slope

        optimizers = training_callback_attributes.optimizers

        def before_step(step: int) -> None:
            self.enter_step(step, optimizers.schedulers if optimizers else None)
            fraction = np.clip(step / anneal_iters, 0, 1)
            self.proposal_sampler.set_anneal(slope * fraction / ((slope - 1) * fraction + 1))

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before_step, update_every_num_iters=1),
            TrainingCallback(
                [TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.proposal_sampler.step_cb, update_every_num_iters=1
            ),
        ]

    # ----------------------------------------------------------------- rendering
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor | List]:
        return self.render(ray_bundle, with_features=self.training)

    def render(self, ray_bundle: RayBundle, with_features: bool) -> Dict[str, Tensor | List]:
        """RGB, depth and the segmentation outputs of a ray bundle.

        ``with_features`` adds the rendered CLIP features ``clip`` and the logits (training
        needs them; the benchmark's diagnostics render them in eval mode).
        """
        # Reconstruction steps train RGB only: no selection volume, no CLIP features.
        segmenting = not (self.training and self.phase is Phase.RECONSTRUCTION)
        ray_samples, weights_list, ray_samples_list = self.proposal_sampler(ray_bundle, density_fns=self.density_fns)
        field_outputs = self.field(ray_samples, compute_selection=segmenting)
        weights = ray_samples.get_weights(field_outputs[FieldOutput.DENSITY])
        weights_list.append(weights)
        ray_samples_list.append(ray_samples)

        rgb = self.renderer_rgb(rgb=field_outputs[FieldOutput.RGB], weights=weights)
        accumulation = self.renderer_accumulation(weights=weights)
        with torch.no_grad():
            depth = self.renderer_depth(weights=weights, ray_samples=ray_samples)
        outputs: Dict[str, Tensor | List] = {}
        if segmenting:
            outputs.update(self.segmentation_outputs(field_outputs, weights, accumulation, with_features))
        outputs.update(rgb=rgb, accumulation=accumulation, depth=depth)
        if self.training:
            outputs.update(weights_list=weights_list, ray_samples_list=ray_samples_list)
        return outputs

    def segmentation_outputs(
        self, field_outputs: Dict, weights: Tensor, accumulation: Tensor, with_features: bool
    ) -> Dict[str, Tensor]:
        """Rendered CLIP feature (Eq. 1), selection (Eq. 2), logits (Eq. 4) and the label map.

        ``labels`` comes first: the viewer shows the first output by default.
        """
        rendered_appearance = torch.sum(weights * field_outputs[FieldOutput.APPEARANCE], dim=-2)
        clip = self.clip_head.render(rendered_appearance, accumulation)
        selection_logits = field_outputs[FieldOutput.SELECTION]
        if self.options.selection_activation == "sigmoid":
            selection_logits = torch.sigmoid(selection_logits)
        selection = self.render_selection(torch.sum(weights * selection_logits, dim=-2))
        text, colours = (self.text_features, self.label_colours) if self.training else (
            self.display_text_features, self.display_colours
        )
        logits = losses.segmentation_logits(clip, text)
        outputs = {
            "labels": colourize(logits.argmax(dim=-1), colours),
            "class_probabilities": torch.softmax(logits, dim=-1),
            "selection": selection,
        }
        if with_features:
            outputs.update(clip=clip, logits=logits)
        if not self.training and self._query is not None:
            outputs["query_relevancy"] = query_relevancy(clip, self._query[0], self._query[1:])
        return outputs

    @torch.no_grad()
    def get_outputs_for_camera(self, camera, obb_box=None) -> Dict[str, Tensor]:
        """Adds ``labels_overlay``: labels over RGB with boundaries (needs the whole image)."""
        outputs = super().get_outputs_for_camera(camera, obb_box=obb_box)
        label_ids = outputs["class_probabilities"].argmax(dim=-1)
        outputs["labels_overlay"] = overlay(outputs["rgb"], outputs["labels"], label_ids)
        return outputs

    # -------------------------------------------------------------------- losses
    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        num_rays = batch["num_random_rays"]  # patch rays, if any, follow the random rays
        metrics = {"psnr": psnr(outputs["rgb"][:num_rays], batch["image"].to(self.device))}
        if self.training and self.phase is Phase.RECONSTRUCTION:
            metrics["distortion"] = distortion_loss(outputs["weights_list"], outputs["ray_samples_list"])
        return metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        """Loss terms of the current phase, each under its own name.

        Random rays carry ``rgb``, ``clip`` (Eq. 3) and ``rda`` (Eqs. 5-8); the patch rays
        that follow them in the batch carry ``fda_pos`` and ``fda_neg`` (Eqs. 9-14).
        """
        loss_dict: Dict[str, Tensor] = {}
        phase = self.phase if self.training else Phase.SEGMENTATION_JOINT
        num_rays = batch["num_random_rays"]
        if phase is not Phase.SEGMENTATION_FROZEN:
            loss_dict["rgb"] = self.rgb_loss(batch["image"].to(self.device)[..., :3], outputs["rgb"][:num_rays])
        if self.training and phase is Phase.RECONSTRUCTION:
            loss_dict["interlevel"] = self.config.interlevel_loss_mult * interlevel_loss(
                outputs["weights_list"], outputs["ray_samples_list"]
            )
            assert metrics_dict is not None
            loss_dict["distortion"] = self.config.distortion_loss_mult * metrics_dict["distortion"]
        if phase is Phase.RECONSTRUCTION or "clip_targets" not in batch or "clip" not in outputs:
            return loss_dict
        loss_dict.update(
            self.supervision_losses(
                outputs["clip"][:num_rays], outputs["logits"][:num_rays], outputs["selection"][:num_rays], batch
            )
        )
        fda_on = phase is Phase.SEGMENTATION_JOINT or self.config.fda_start == "frozen"
        if self.config.use_fda and fda_on and "dino_tokens" in batch:
            loss_dict["fda_pos"], loss_dict["fda_neg"] = self.fda_terms(outputs["clip"][num_rays:], batch["dino_tokens"])
        return loss_dict

    def fda_terms(self, patch_clip: Tensor, dino_tokens: Tensor) -> Tuple[Tensor, Tensor]:
        """Pools the patch rays to DINO's token grid and evaluates Eq. 14's two parts."""
        num_patches, num_tokens = dino_tokens.shape[:2]
        pooled = pool_patch_rays(patch_clip, num_patches, num_tokens)
        return self.fda_from_logits(losses.segmentation_logits(pooled, self.text_features), dino_tokens)

    # ---------------------------------------------------------------- evaluation
    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt_rgb = batch["image"].to(self.device)[..., :3]
        metrics: Dict[str, float] = {"psnr": float(psnr(outputs["rgb"], gt_rgb))}
        images = {
            "img": torch.cat([gt_rgb, outputs["rgb"]], dim=1),
            "labels": outputs["labels"],
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        if "gt_labels" in batch:
            metrics.update(self.label_metrics(outputs["class_probabilities"].argmax(dim=-1), batch["gt_labels"]))
            images["labels_overlay"] = outputs["labels_overlay"]
        return metrics, images


def psnr(predicted: Tensor, target: Tensor) -> Tensor:
    """PSNR of images in [0, 1] (torchmetrics' module would be a checkpointed submodule)."""
    mse = torch.mean((predicted - target[..., :3]) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
