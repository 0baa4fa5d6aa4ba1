"""The field's outputs and how positions reach them: returned by ``get_density``, never stored."""

from __future__ import annotations

import torch

from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.field_components.spatial_distortions import SceneContraction

from ovs3d_nerfstudio.field import FieldOutput, Ovs3dField

NUM_SCALES, APPEARANCE_DIM = 3, 8


def tiny_field(contracted: bool = True) -> Ovs3dField:
    torch.manual_seed(0)
    return Ovs3dField(
        torch.tensor([[-1.0] * 3, [1.0] * 3]),
        num_images=4,
        num_scales=NUM_SCALES,
        spatial_distortion=SceneContraction(order=float("inf")) if contracted else None,
        num_levels=2,
        max_res=32,
        log2_hashmap_size=10,
        hidden_dim=16,
        appearance_dim=APPEARANCE_DIM,
        hidden_dim_color=16,
        appearance_embedding_dim=4,
        selection_num_levels=2,
        selection_max_res=16,
        selection_log2_hashmap_size=8,
        implementation="torch",
    )


def samples(seed: int, rays: int = 5, per_ray: int = 7) -> RaySamples:
    generator = torch.Generator().manual_seed(seed)
    bundle = RayBundle(
        origins=torch.randn(rays, 3, generator=generator) * 0.2,
        directions=torch.nn.functional.normalize(torch.randn(rays, 3, generator=generator), dim=-1),
        pixel_area=torch.full((rays, 1), 1e-4),
        camera_indices=torch.randint(0, 4, (rays, 1), generator=generator),
    )
    edges = torch.linspace(0.05, 3.0, per_ray + 1).expand(rays, -1)
    return bundle.get_ray_samples(bin_starts=edges[:, :-1, None], bin_ends=edges[:, 1:, None])


def test_forward_names_every_output_with_one_enum():
    field = tiny_field()
    outputs = field(samples(0))
    assert set(outputs) == set(FieldOutput)
    assert outputs[FieldOutput.DENSITY].shape == (5, 7, 1) and bool((outputs[FieldOutput.DENSITY] >= 0).all())
    assert outputs[FieldOutput.RGB].shape == (5, 7, 3)
    assert outputs[FieldOutput.APPEARANCE].shape == (5, 7, APPEARANCE_DIM)
    assert outputs[FieldOutput.SELECTION].shape == (5, 7, NUM_SCALES)
    assert FieldOutput.SELECTION not in field(samples(0), compute_selection=False)


def test_positions_travel_as_the_density_embedding_not_as_state():
    field = tiny_field()
    first, second = samples(1), samples(2)
    attributes = set(vars(field))
    density, positions = field.get_density(first)
    field.get_density(second)  # another batch in between must not change what `first` gets
    assert set(vars(field)) == attributes  # nothing stored on the field
    assert torch.equal(positions, field.grid_positions(first)[0])
    passed = field.get_outputs(first, density_embedding=positions)
    recomputed = field.get_outputs(first)  # nerfstudio's Field contract: the embedding is optional
    whole = field(first)
    for name in (FieldOutput.RGB, FieldOutput.APPEARANCE, FieldOutput.SELECTION):
        torch.testing.assert_close(passed[name], whole[name])
        torch.testing.assert_close(recomputed[name], whole[name])
    torch.testing.assert_close(density, whole[FieldOutput.DENSITY])


def test_samples_outside_the_box_have_no_density():
    field = tiny_field(contracted=False)  # a bounded scene: samples beyond its box are outside
    far = samples(3)
    positions, inside = field.grid_positions(far)
    assert bool(inside.any()) and not bool(inside.all())
    density, _ = field.get_density(far)
    assert bool((density[~inside.squeeze(-1)] == 0).all()) and bool((density[inside.squeeze(-1)] > 0).all())
    assert bool((positions[~inside.squeeze(-1)] == 0).all())
