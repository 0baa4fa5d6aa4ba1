"""The 3D-OVS field: three independent volumes, as in the paper's Fig. 6.

* a *density* volume (geometry),
* a shared *appearance* volume whose features feed both the view-dependent RGB head and
  the view-independent CLIP head,
* a low-dimensional *selection* volume giving N_s scale logits per sample (Eq. 2).

Keeping density and appearance in separate volumes is what lets segmentation phase 1
freeze both and phase 2 unfreeze appearance alone (Appendix A.3).

The CLIP head (:class:`ClipHead`) is the paper's view-independent MLP; the official code
stacks its linear layers without activations, so the head is an affine map and commutes
with volume rendering: ``sum_i w_i (A a_i + c) = A (sum_i w_i a_i) + c * sum_i w_i``. The
field therefore returns appearance features per sample and the model projects the
*rendered* features to D = 512 once per ray instead of once per sample, which is exact and
~N_samples times cheaper.
"""

from __future__ import annotations

from enum import Enum
from typing import Dict, Literal, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from nerfstudio.cameras.rays import RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.embedding import Embedding
from nerfstudio.field_components.encodings import SHEncoding
from nerfstudio.field_components.mlp import MLP, MLPWithHashEncoding
from nerfstudio.field_components.spatial_distortions import SpatialDistortion
from nerfstudio.fields.base_field import Field, get_normalized_directions

from ovs3d_nerfstudio.errors import UserFacingError


class FieldOutput(Enum):
    """The per-sample outputs of :class:`Ovs3dField`."""

    DENSITY = "density"
    RGB = "rgb"
    APPEARANCE = "appearance"
    """Appearance features: input of the RGB head here and, once rendered, of the CLIP head."""
    SELECTION = "selection"
    """N_s scale logits (Eq. 2), before rendering."""


class ClipHeadError(UserFacingError, ValueError):
    """An impossible CLIP head shape."""


class ClipHead(nn.Module):
    """Appearance feature -> CLIP feature: ``num_layers`` linear layers, no activations.

    Paper (App. A): "another MLP which discards view direction input"; official code: three
    linear layers of width 128 without activations. The composition is affine, but the
    layered form is what the paper's learning rates (1e-4, 5e-5 with Adam) were set for: it
    moves the end-to-end map much faster than a single linear layer would at those rates.
    """

    def __init__(self, in_dim: int, out_dim: int, num_layers: int = 3, hidden_dim: int = 128) -> None:
        super().__init__()
        if num_layers < 1:
            raise ClipHeadError(
                f"the CLIP head needs at least one layer, got --pipeline.model.clip-head-layers {num_layers}; use 1 or more."
            )
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])))

    def forward(self, appearance: Float[Tensor, "*bs in_dim"]) -> Float[Tensor, "*bs out_dim"]:
        return self.layers(appearance)

    def render(
        self, rendered_appearance: Float[Tensor, "*bs in_dim"], accumulation: Float[Tensor, "*bs 1"]
    ) -> Float[Tensor, "*bs out_dim"]:
        """``sum_i w_i head(a_i)`` from ``sum_i w_i a_i`` and ``sum_i w_i`` (exact: the head is affine)."""
        offset = self.layers(rendered_appearance.new_zeros(rendered_appearance.shape[-1]))
        return self.layers(rendered_appearance) + (accumulation - 1.0) * offset


class Ovs3dField(Field):
    """Density + appearance (RGB, CLIP) + selection volumes on hash grids.

    ``implementation="tcnn"`` uses tiny-cuda-nn when it is installed and nerfstudio's torch
    path otherwise (which also runs on CPU).
    """

    aabb: Tensor

    def __init__(
        self,
        aabb: Tensor,
        num_images: int,
        num_scales: int,
        spatial_distortion: Optional[SpatialDistortion],
        num_levels: int = 16,
        base_res: int = 16,
        max_res: int = 2048,
        log2_hashmap_size: int = 19,
        features_per_level: int = 2,
        hidden_dim: int = 64,
        appearance_dim: int = 32,
        hidden_dim_color: int = 64,
        appearance_embedding_dim: int = 32,
        selection_num_levels: int = 8,
        selection_max_res: int = 512,
        selection_log2_hashmap_size: int = 17,
        average_init_density: float = 1.0,
        implementation: Literal["tcnn", "torch"] = "tcnn",
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb)
        self.spatial_distortion = spatial_distortion
        self.average_init_density = average_init_density
        self.appearance_dim = appearance_dim

        def hash_mlp(out_dim: int, levels: int, top_res: int, log2_size: int, layers: int) -> MLPWithHashEncoding:
            return MLPWithHashEncoding(
                num_levels=levels,
                min_res=base_res,
                max_res=top_res,
                log2_hashmap_size=log2_size,
                features_per_level=features_per_level,
                num_layers=layers,
                layer_width=hidden_dim,
                out_dim=out_dim,
                activation=nn.ReLU(),
                out_activation=None,
                implementation=implementation,
            )

        self.density_volume = hash_mlp(1, num_levels, max_res, log2_hashmap_size, 2)
        self.appearance_volume = hash_mlp(appearance_dim, num_levels, max_res, log2_hashmap_size, 2)
        self.selection_volume = hash_mlp(num_scales, selection_num_levels, selection_max_res, selection_log2_hashmap_size, 1)

        self.direction_encoding = SHEncoding(levels=4, implementation=implementation)
        self.embedding_appearance = Embedding(num_images, appearance_embedding_dim)
        self.rgb_head = MLP(
            in_dim=self.direction_encoding.get_out_dim() + appearance_dim + appearance_embedding_dim,
            num_layers=3,
            layer_width=hidden_dim_color,
            out_dim=3,
            activation=nn.ReLU(),
            out_activation=nn.Sigmoid(),
            implementation=implementation,
        )

    def grid_positions(self, ray_samples: RaySamples) -> Tuple[Float[Tensor, "*bs 3"], Float[Tensor, "*bs 1"]]:
        """Sample positions in the hash grids' [0, 1]^3 (contracted when unbounded), zero outside
        it, and whether each sample is inside."""
        positions = ray_samples.frustums.get_positions()
        if self.spatial_distortion is not None:
            positions = (self.spatial_distortion(positions) + 2.0) / 4.0
        else:
            positions = SceneBox.get_normalized_positions(positions, self.aabb)
        inside = ((positions > 0.0) & (positions < 1.0)).all(dim=-1, keepdim=True)
        return positions * inside, inside

    def get_density(self, ray_samples: RaySamples) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs 3"]]:
        """Density, and as the *density embedding* the grid positions of the samples: the
        appearance and selection volumes read the same positions (nerfacto hands its density
        MLP's features to ``get_outputs`` the same way)."""
        positions, inside = self.grid_positions(ray_samples)
        raw = self.density_volume(positions.view(-1, 3)).view(*positions.shape[:-1], 1)
        density = self.average_init_density * trunc_exp(raw.to(positions)) * inside
        return density, positions

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None, compute_selection: bool = True
    ) -> Dict[FieldOutput, Tensor]:
        """RGB and appearance features, and the selection logits when ``compute_selection``.

        ``density_embedding`` is what :meth:`get_density` returned for these samples (their
        grid positions); without it they are computed again."""
        if density_embedding is None:
            density_embedding, _ = self.grid_positions(ray_samples)
        positions = density_embedding.view(-1, 3)
        shape = ray_samples.frustums.directions.shape[:-1]
        appearance = self.appearance_volume(positions).view(*shape, -1).float()

        directions = get_normalized_directions(ray_samples.frustums.directions).view(-1, 3)
        if self.training:
            assert ray_samples.camera_indices is not None, "training rays need camera indices"
            embedded = self.embedding_appearance(ray_samples.camera_indices.squeeze(-1))
        else:
            embedded = self.embedding_appearance.mean(dim=0).expand(*shape, -1)
        rgb_input = torch.cat(
            [self.direction_encoding(directions), appearance.view(-1, self.appearance_dim), embedded.reshape(-1, embedded.shape[-1])],
            dim=-1,
        )
        rgb = self.rgb_head(rgb_input).view(*shape, 3).float()
        outputs = {FieldOutput.RGB: rgb, FieldOutput.APPEARANCE: appearance}
        if compute_selection:
            outputs[FieldOutput.SELECTION] = self.selection_volume(positions).view(*shape, -1).float()
        return outputs

    def forward(self, ray_samples: RaySamples, compute_selection: bool = True) -> Dict[FieldOutput, Tensor]:
        """Every output of the samples; ``compute_selection=False`` skips the selection volume
        (reconstruction needs no scales). Replaces ``Field.forward``, which has no such switch
        and computes normals this field does not have."""
        density, positions = self.get_density(ray_samples)
        outputs = self.get_outputs(ray_samples, density_embedding=positions, compute_selection=compute_selection)
        outputs[FieldOutput.DENSITY] = density
        return outputs
