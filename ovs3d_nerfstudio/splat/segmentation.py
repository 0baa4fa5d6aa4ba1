"""The method on Gaussians, without nerfstudio's Model around it yet: rendering, phases, losses.

What exists: :class:`SplatSegmentation` holds the Gaussians (``gaussians.py``), the method's CLIP
head (``field.ClipHead``, applied after rasterization) and the text features; it renders full
images and patches, scores them in the latent space (``scoring.py``), follows the three phases
of ``schedule.ScheduleConfig`` with :data:`SPLAT_TRAINABLE` (geometry frozen in segmentation),
and builds the loss dict from the pure functions of ``losses.py`` (Eq. 3 on sampled pixels,
RDA, FDA on patch cameras pooled to DINO's token grid).

What is missing before ``ns-train ovs3d-splat`` can be registered (issue 13): a nerfstudio
``SplatfactoModel`` subclass around this (the viewer and ``ns-export gaussian-splat`` branch on
that class), a full-image datamanager serving sampled pixels with their CLIP / relevancy targets
and FDA patch cameras, per-group learning rates and a phase scheduler for them, densification
in reconstruction (gsplat's ``DefaultStrategy``), initial points for LLFF scenes,
spherical-harmonic colour, and the surfaces (viewer panel, ns-render, ns-eval, export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from nerfstudio.configs.base_config import InstantiateConfig

from ovs3d_nerfstudio import losses
from ovs3d_nerfstudio.field import ClipHead
from ovs3d_nerfstudio.schedule import Phase, ScheduleConfig
from ovs3d_nerfstudio.splat.gaussians import GEOMETRY_GROUPS, GaussianFieldConfig
from ovs3d_nerfstudio.splat.scoring import latent_space_logits

SPLAT_TRAINABLE: Dict[Phase, Tuple[str, ...]] = {
    Phase.RECONSTRUCTION: (*GEOMETRY_GROUPS, "rgb"),
    Phase.SEGMENTATION_FROZEN: ("clip_latent", "selection", "clip_head"),
    Phase.SEGMENTATION_JOINT: ("clip_latent", "selection", "clip_head", "rgb"),
}
"""The NeRF variant's phases on Gaussians: geometry is trained in reconstruction only; the
colour comes back in the joint phase with the RGB loss, as the appearance volume does there."""


@dataclass
class SplatSegmentationConfig(InstantiateConfig):
    """The method's options that mean the same as the NeRF variant's keep its names and defaults."""

    _target: Type = field(default_factory=lambda: SplatSegmentation)
    gaussians: GaussianFieldConfig = field(default_factory=GaussianFieldConfig)
    """Sizes and initial values of the Gaussians."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Phase lengths (the learning rates are not applied here yet)."""
    clip_head_layers: int = 3
    """Linear layers of the CLIP head, no activations (official: 3)."""
    clip_head_width: int = 128
    """Width of the CLIP head's hidden layers (official: 128)."""
    clip_loss_mult: float = 1.0
    """Weight of the CLIP half of the supervision loss (Eq. 3)."""
    rda_loss_mult: float = 1.0
    """Weight of the RDA loss (Eqs. 5-8)."""
    fda_temperature: float = 0.2
    """tau of the sharpened probabilities (Eq. 10)."""
    fda_shift: float = 0.7
    """b, the DINO similarity above which two tokens count as similar (Eqs. 12-13)."""
    fda_lambda_pos: float = 200.0
    """Weight of the similar-DINO-feature part of FDA (Eq. 14)."""
    fda_lambda_neg: float = 0.2
    """Weight of the dissimilar part (Eq. 14)."""
    fda_chunk_size: int = 128
    """Rows of the pairwise JS correlation computed at once."""


class SplatSegmentation(nn.Module):
    """Gaussians + CLIP head + text features: renders, scores and computes the losses of a phase."""

    def __init__(
        self,
        config: SplatSegmentationConfig,
        points: Float[Tensor, "N 3"],
        colours: Float[Tensor, "N 3"],
        text_features: Float[Tensor, "C D"],
        num_scales: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.gaussians = config.gaussians.setup(points=points, colours=colours, num_scales=num_scales)
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=-1))
        self.clip_head = ClipHead(
            config.gaussians.latent_dim, text_features.shape[-1], config.clip_head_layers, config.clip_head_width
        )
        self.phase = config.schedule.phase(0)

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {**self.gaussians.param_groups(), "clip_head": list(self.clip_head.parameters())}

    def enter_step(self, step: int) -> None:
        """The phase of ``step`` and its frozen groups: a pure function of the step (resume-safe)."""
        self.phase = self.config.schedule.phase(step)
        for group, params in self.param_groups().items():
            for param in params:
                param.requires_grad_(group in SPLAT_TRAINABLE[self.phase])

    @property
    def segmenting(self) -> bool:
        return not (self.training and self.phase is Phase.RECONSTRUCTION)

    def render(
        self,
        viewmats: Float[Tensor, "C 4 4"],
        Ks: Float[Tensor, "C 3 3"],
        width: int,
        height: int,
        background: Optional[Float[Tensor, "C 3"]] = None,
    ) -> Dict[str, Tensor]:
        """``rgb``, ``alpha``, ``depth``; outside reconstruction also the rendered ``clip_latent``,
        the ``selection`` (Eq. 2's softmax) and the class ``logits`` (Eq. 4, in latent space)."""
        outputs = self.gaussians.render(viewmats, Ks, width, height, segmentation=self.segmenting, background=background)
        if self.segmenting:
            outputs["selection"] = torch.softmax(outputs.pop("selection_logits"), dim=-1)
            outputs["logits"] = latent_space_logits(outputs["clip_latent"], outputs["alpha"], self.clip_head, self.text_features)
        return outputs

    def clip_at(self, outputs: Dict[str, Tensor], pixels: Int[Tensor, "R 3"]) -> Float[Tensor, "R D"]:
        """The CLIP features (Eq. 1) of the (camera, row, column) ``pixels``: decoded only there."""
        camera, row, column = pixels.unbind(-1)
        return self.clip_head.render(outputs["clip_latent"][camera, row, column], outputs["alpha"][camera, row, column])

    def loss_dict(
        self,
        outputs: Dict[str, Tensor],
        batch: Dict[str, Tensor],
        patch_outputs: Optional[Dict[str, Tensor]] = None,
    ) -> Dict[str, Tensor]:
        """The phase's losses: ``rgb`` (reconstruction, joint), ``clip`` and ``rda`` at the sampled
        ``pixels``, ``fda_pos`` / ``fda_neg`` on ``patch_outputs`` with the batch's ``dino_tokens``.

        ``batch``: ``image`` [C, H, W, 3]; ``pixels`` [R, 3]; ``clip_targets`` [R, N_s, D];
        optionally ``relevancy`` [R, N_s, C] and ``dino_tokens`` [P, h * w, Cd].
        """
        loss_dict: Dict[str, Tensor] = {}
        if self.phase is not Phase.SEGMENTATION_FROZEN:
            loss_dict["rgb"] = F.mse_loss(outputs["rgb"], batch["image"].to(outputs["rgb"]))
        if self.phase is Phase.RECONSTRUCTION:
            return loss_dict
        camera, row, column = batch["pixels"].unbind(-1)
        selection = outputs["selection"][camera, row, column]
        clip = self.clip_at(outputs, batch["pixels"])
        loss_dict["clip"] = self.config.clip_loss_mult * losses.clip_supervision_loss(clip, batch["clip_targets"], selection)
        if "relevancy" in batch:
            relevancy = losses.selected_relevancy(batch["relevancy"], selection)
            logits = outputs["logits"][camera, row, column]
            loss_dict["rda"] = self.config.rda_loss_mult * losses.rda_loss(logits, relevancy)
        if patch_outputs is not None and "dino_tokens" in batch:
            loss_dict["fda_pos"], loss_dict["fda_neg"] = self.fda_terms(patch_outputs, batch["dino_tokens"])
        return loss_dict

    def fda_terms(self, patch_outputs: Dict[str, Tensor], dino_tokens: Float[Tensor, "P N Cd"]) -> Tuple[Tensor, Tensor]:
        """Eq. 14 on patch cameras: latent and alpha average-pooled to the token grid, then scored.

        Pooling is linear and the head affine, so this scores the pooled CLIP features exactly."""
        latent, alpha = patch_outputs["clip_latent"], patch_outputs["alpha"]
        num_patches, height, width = latent.shape[:3]
        side = int(round(dino_tokens.shape[1] ** 0.5))
        if side * side != dino_tokens.shape[1] or height % side or width % side:
            raise ValueError(f"{dino_tokens.shape[1]} tokens do not tile a {height}x{width} patch as a square grid")

        def pool(x: Tensor) -> Tensor:
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), (height // side, width // side))
            return pooled.flatten(2).transpose(1, 2)  # [P, tokens, channels], row-major like the DINO grid

        logits = latent_space_logits(pool(latent), pool(alpha), self.clip_head, self.text_features)
        return losses.fda_loss(
            logits, dino_tokens, tau=self.config.fda_temperature, shift=self.config.fda_shift,
            lambda_pos=self.config.fda_lambda_pos, lambda_neg=self.config.fda_lambda_neg,
            chunk_size=self.config.fda_chunk_size,
        )
