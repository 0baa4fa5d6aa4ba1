"""The built-in DINO teacher: DINO v1 ViTs (paper: ViT-B/8) on timm, with weights found offline.

The paper correlates the last-block tokens of ``dino_vitb8`` (Eq. 9). timm 0.6.7 ships the
same architecture and weights as ``vit_base_patch8_224_dino``, but its ViT only accepts
its training size (224 x 224); the teacher therefore runs the blocks itself and
interpolates the position embeddings to any input whose sides are multiples of 8.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from timm.models import get_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ovs3d_nerfstudio.teachers.base import TeacherError
from ovs3d_nerfstudio.teachers.weights import RANDOM_WEIGHTS, seeded_initialisation, weights_file

OFFICIAL_WEIGHTS = "dino"
"""Pretrained tag for the official DINO v1 release weights."""

DINO_V1_ARCHITECTURES: Dict[str, Tuple[int, int, int, int]] = {
    "vit_small_patch16_224_dino": (16, 384, 12, 6),
    "vit_small_patch8_224_dino": (8, 384, 12, 6),
    "vit_base_patch16_224_dino": (16, 768, 12, 12),
    "vit_base_patch8_224_dino": (8, 768, 12, 12),
}
"""timm 0.6.7 names of the DINO v1 ViTs: (patch size, width, depth, heads).

timm's entry points fix these four as keyword arguments, so overrides cannot be passed
through ``timm.create_model``; the teacher builds timm's ``VisionTransformer`` from them."""


def hub_checkpoint_path(model_name: str) -> Path:
    """Where torch.hub (``facebookresearch/dino``) and timm both cache the official weights."""
    url = get_pretrained_cfg(model_name)["url"]
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _missing_weights_message(model_name: str, cache_file: Path) -> str:
    url = get_pretrained_cfg(model_name)["url"]
    return (
        f"No local weights for DINO model '{model_name}'; this teacher never downloads. "
        f"Looked for {cache_file}.\n"
        "Provide the weights in one of two ways:\n"
        "  1. point to the checkpoint file: --pipeline.datamanager.dino.weights-path /path/to/file\n"
        f"  2. download {url} on a machine with internet and copy it to {cache_file}\n"
        f"(For tests only: --pipeline.datamanager.dino.pretrained {RANDOM_WEIGHTS} uses untrained weights.)"
    )


class DinoTeacher:
    """Frozen DINO v1 ViT implementing :class:`DenseTeacher`: last-block tokens, one per patch.

    Not an ``nn.Module``, so that a pipeline holding it does not save its weights.

    Args:
        model_name: one of :data:`DINO_V1_ARCHITECTURES`.
        pretrained: ``"dino"`` for the official weights (from the torch hub cache), or
            ``"random"`` for seeded untrained weights.
        weights_path: explicit checkpoint file (a backbone state dict); takes precedence.
        depth, embed_dim, num_heads: architecture overrides, for tiny test models.
        device: where the model runs.
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch8_224_dino",
        pretrained: str = OFFICIAL_WEIGHTS,
        weights_path: Optional[Path] = None,
        depth: Optional[int] = None,
        embed_dim: Optional[int] = None,
        num_heads: Optional[int] = None,
        device: str = "cpu",
    ) -> None:
        if model_name not in DINO_V1_ARCHITECTURES:
            close = difflib.get_close_matches(model_name, list(DINO_V1_ARCHITECTURES), n=1)
            raise TeacherError(
                f"Unknown DINO v1 model '{model_name}'{f' (did you mean {close[0]}?)' if close else ''}. "
                f"Known: {sorted(DINO_V1_ARCHITECTURES)}; other models need an import-path teacher."
            )
        patch_size, default_dim, default_depth, default_heads = DINO_V1_ARCHITECTURES[model_name]
        architecture = {
            "embed_dim": default_dim if embed_dim is None else embed_dim,
            "depth": default_depth if depth is None else depth,
            "num_heads": default_heads if num_heads is None else num_heads,
        }
        overridden = architecture != dict(embed_dim=default_dim, depth=default_depth, num_heads=default_heads)
        if min(architecture.values()) < 1 or architecture["embed_dim"] % architecture["num_heads"] != 0:
            raise TeacherError(
                f"Invalid DINO architecture {architecture}: sizes must be positive, embed_dim divisible by num_heads."
            )

        checkpoint: Optional[Path]
        if weights_path is not None:
            checkpoint, weights_identity = weights_file(weights_path, "DINO")
        elif pretrained == RANDOM_WEIGHTS:
            checkpoint = None
            weights_identity = RANDOM_WEIGHTS
        elif pretrained == OFFICIAL_WEIGHTS:
            if overridden:
                raise TeacherError(
                    "The official DINO weights do not fit an overridden architecture "
                    f"({architecture}); use pretrained '{RANDOM_WEIGHTS}' or a matching weights_path."
                )
            checkpoint = hub_checkpoint_path(model_name)
            if not checkpoint.is_file():
                raise TeacherError(_missing_weights_message(model_name, checkpoint))
            weights_identity = OFFICIAL_WEIGHTS
        else:
            raise TeacherError(
                f"Unknown DINO pretrained tag '{pretrained}': use '{OFFICIAL_WEIGHTS}', '{RANDOM_WEIGHTS}', "
                "or --pipeline.datamanager.dino.weights-path."
            )

        pretrained_cfg = get_pretrained_cfg(model_name)
        with seeded_initialisation():
            self.model = VisionTransformer(
                img_size=pretrained_cfg["input_size"][-1], patch_size=patch_size, num_classes=0, **architecture
            )
        if checkpoint is not None:
            self._load(checkpoint)
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)

        self.stride: int = patch_size
        self.feature_dim: int = architecture["embed_dim"]
        suffix = "-d{depth}-e{embed_dim}-h{num_heads}".format(**architecture) if overridden else ""
        self.identity: str = f"dino_v1:{model_name}{suffix}:{weights_identity}"
        self.mean = torch.tensor(pretrained_cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pretrained_cfg["std"], device=self.device).view(1, 3, 1, 1)

    def _load(self, checkpoint: Path) -> None:
        """Loads a backbone state dict; only classifier-head keys may be absent or extra."""
        try:
            state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
            result = self.model.load_state_dict(state_dict, strict=False)
        except Exception as error:
            raise TeacherError(f"Could not load DINO weights from '{checkpoint}': {error}") from error
        wrong = [key for key in result.missing_keys + result.unexpected_keys if not key.startswith("head")]
        if wrong:
            raise TeacherError(
                f"DINO weights '{checkpoint}' do not match the ViT: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}. Expected a DINO v1 backbone state dict."
            )

    def _position_embedding(self, grid_h: int, grid_w: int) -> Float[Tensor, "1 N C"]:
        """The class-token embedding followed by the patch embeddings resampled to the grid."""
        pos_embed = self.model.pos_embed
        train_h, train_w = self.model.patch_embed.grid_size
        if (grid_h, grid_w) == (train_h, train_w):
            return pos_embed
        channels = pos_embed.shape[-1]
        patch_pos = pos_embed[:, 1:].reshape(1, train_h, train_w, channels).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, channels)
        return torch.cat([pos_embed[:, :1], patch_pos], dim=1)

    @torch.no_grad()
    def encode_dense(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B h w C"]:
        """Last-block tokens (after the final norm, class token dropped); float32 on the teacher's device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DINO expects images of shape [B, 3, H, W], got {tuple(images.shape)}.")
        batch, _, height, width = images.shape
        if height % self.stride or width % self.stride or height == 0 or width == 0:
            raise ValueError(
                f"DINO input sides must be positive multiples of the stride {self.stride}, got {height}x{width}; "
                "crop or resize the images first."
            )
        grid_h, grid_w = height // self.stride, width // self.stride
        x = (images.to(self.device, torch.float32) - self.mean) / self.std
        tokens = self.model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = self.model.patch_embed.norm(tokens)
        tokens = torch.cat([self.model.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = self.model.blocks(tokens + self._position_embedding(grid_h, grid_w))
        tokens = self.model.norm(tokens)
        return tokens[:, 1:].reshape(batch, grid_h, grid_w, self.feature_dim)
