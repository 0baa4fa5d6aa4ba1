"""The splat variant's field: 3D Gaussians that carry colour, a CLIP latent and selection logits.

Each Gaussian has geometry (mean, rotation, scale, opacity), a view-independent colour, a
``latent_dim`` CLIP latent (the input of the method's CLIP head, as the NeRF variant's
appearance features are) and N_s selection logits (Eq. 2). One rasterization call renders
``[rgb | latent | selection]`` together (``latent_dim`` 26 with 3 scales fills gsplat's
32-channel kernel in one pass). Latent and selection channels get no background: their
rendering is ``sum_i w_i x_i``, so the affine CLIP head applied afterwards with the alpha
(``ClipHead.render``) is exact, as in the NeRF variant.

Not here yet (issue 13): spherical-harmonic colour (the colour is view-independent),
densification (gsplat's ``DefaultStrategy``) and the learning rates of each group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Type

import torch
from jaxtyping import Float
from torch import Tensor, nn

from nerfstudio.configs.base_config import InstantiateConfig

from ovs3d_nerfstudio.splat.rasterize import rasterize

GEOMETRY_GROUPS = ("means", "scales", "quats", "opacities")
"""Parameter groups that place and shape the Gaussians: trained in reconstruction only."""


@dataclass
class GaussianFieldConfig(InstantiateConfig):
    """Sizes and initial values of the Gaussians."""

    _target: Type = field(default_factory=lambda: GaussianField)
    latent_dim: int = 26
    """CLIP latent per Gaussian (input of the CLIP head); 3 + latent_dim + N_s <= 32 renders in one kernel pass."""
    initial_opacity: float = 0.1
    """Opacity of every Gaussian at initialisation."""
    neighbours_for_scale: int = 3
    """Initial scale: the mean distance to this many nearest initial points."""
    near_plane: float = 0.01
    """Gaussians nearer to the camera than this are not rendered."""
    far_plane: float = 1e10
    """Gaussians farther than this are not rendered."""


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


def nearest_neighbour_distance(points: Float[Tensor, "N 3"], k: int, chunk: int = 4096) -> Float[Tensor, "N"]:
    """Mean distance of each point to its ``k`` nearest others (chunked ``cdist``; no scikit-learn)."""
    k = min(k, len(points) - 1)
    if k < 1:
        return points.new_ones(len(points))
    distances = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], points)
        distances.append(d.topk(k + 1, dim=-1, largest=False).values[:, 1:].mean(-1))  # drop the point itself
    return torch.cat(distances)


class GaussianField(nn.Module):
    """The Gaussians' parameters (raw, activated on use) and their rendering."""

    def __init__(
        self, config: GaussianFieldConfig, points: Float[Tensor, "N 3"], colours: Float[Tensor, "N 3"], num_scales: int
    ) -> None:
        super().__init__()
        self.config = config
        self.num_scales = num_scales
        count = len(points)
        distance = nearest_neighbour_distance(points.float(), config.neighbours_for_scale).clamp_min(1e-4)
        quats = torch.zeros(count, 4)
        quats[:, 0] = 1.0
        self.params = nn.ParameterDict(
            {
                "means": nn.Parameter(points.float().clone()),
                "scales": nn.Parameter(torch.log(distance)[:, None].repeat(1, 3)),
                "quats": nn.Parameter(quats),
                "opacities": nn.Parameter(_logit(torch.full((count,), config.initial_opacity))),
                "rgb": nn.Parameter(_logit(colours.float().clamp(1e-3, 1 - 1e-3))),
                "clip_latent": nn.Parameter(torch.zeros(count, config.latent_dim)),
                "selection": nn.Parameter(torch.zeros(count, num_scales)),
            }
        )

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """One group per parameter; the groups' names are the schedule's."""
        return {name: [param] for name, param in self.params.items()}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A checkpoint may hold another number of Gaussians (densification). Resize the existing
        # Parameters in place: optimizers built before the load stay bound to the live tensors.
        for name, param in self.params.items():
            saved = state_dict.get(f"{prefix}params.{name}")
            if saved is not None and saved.shape != param.shape:
                param.data = torch.empty(saved.shape, dtype=param.dtype, device=param.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def render(
        self,
        viewmats: Float[Tensor, "C 4 4"],
        Ks: Float[Tensor, "C 3 3"],
        width: int,
        height: int,
        segmentation: bool = True,
        background: Optional[Float[Tensor, "C 3"]] = None,
    ) -> Dict[str, Tensor]:
        """``rgb``, ``alpha``, ``depth`` (expected) and, with ``segmentation``, the rendered
        ``clip_latent`` and ``selection_logits`` (``sum_i w_i x_i``, no background); ``meta`` is
        the rasterizer's (screen-space means for densification)."""
        p = self.params
        channels = [torch.sigmoid(p["rgb"])]
        if segmentation:
            channels += [p["clip_latent"], p["selection"]]
        colours = torch.cat(channels, dim=-1)
        backgrounds = None
        if background is not None:
            backgrounds = torch.cat([background, background.new_zeros(len(background), colours.shape[-1] - 3)], dim=-1)
        rendered, alpha, meta = rasterize(
            p["means"],
            p["quats"],
            torch.exp(p["scales"]),
            torch.sigmoid(p["opacities"]),
            colours,
            viewmats,
            Ks,
            width,
            height,
            near_plane=self.config.near_plane,
            far_plane=self.config.far_plane,
            backgrounds=backgrounds,
            render_mode="RGB+ED",
        )
        outputs = {"rgb": rendered[..., :3], "alpha": alpha, "depth": rendered[..., -1:], "meta": meta}
        if segmentation:
            latent_end = 3 + self.config.latent_dim
            outputs["clip_latent"] = rendered[..., 3:latent_end]
            outputs["selection_logits"] = rendered[..., latent_end:-1]
        return outputs
