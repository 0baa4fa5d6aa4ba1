"""The splat variant's Gaussians, latent-space scoring and phases (no nerfstudio model yet)."""

from __future__ import annotations

import pytest
import torch

from ovs3d_nerfstudio import losses
from ovs3d_nerfstudio.field import ClipHead
from ovs3d_nerfstudio.schedule import Phase, ScheduleConfig
from ovs3d_nerfstudio.splat.gaussians import GEOMETRY_GROUPS, GaussianFieldConfig, nearest_neighbour_distance
from ovs3d_nerfstudio.splat.scoring import affine_form, latent_space_logits
from ovs3d_nerfstudio.splat.segmentation import SPLAT_TRAINABLE, SplatSegmentation, SplatSegmentationConfig

NUM_SCALES, TEXT_DIM, LATENT_DIM = 3, 16, 6


def cameras(count=2, width=16, height=12):
    viewmats = torch.eye(4).repeat(count, 1, 1)
    viewmats[:, 0, 3] = torch.linspace(-0.1, 0.1, count)  # small sideways steps
    Ks = torch.tensor([[14.0, 0, width / 2], [0, 14.0, height / 2], [0, 0, 1]]).repeat(count, 1, 1)
    return viewmats, Ks, width, height


def model(reconstruction=2, frozen=2, joint=2, count=40) -> SplatSegmentation:
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(count, 3, generator=generator) - 0.5) * torch.tensor([1.0, 0.8, 0.5]) + torch.tensor([0, 0, 2.0])
    config = SplatSegmentationConfig(
        gaussians=GaussianFieldConfig(latent_dim=LATENT_DIM, initial_opacity=0.5),
        schedule=ScheduleConfig(reconstruction_steps=reconstruction, frozen_steps=frozen, joint_steps=joint),
        clip_head_width=8,
    )
    text = torch.randn(4, TEXT_DIM, generator=generator)
    return config.setup(points=points, colours=torch.rand(count, 3, generator=generator), text_features=text,
                        num_scales=NUM_SCALES)


def test_latent_space_logits_equal_the_explicit_cosines_of_eq_4():
    torch.manual_seed(0)
    head = ClipHead(LATENT_DIM, 32, num_layers=3, hidden_dim=8).double()
    latent = torch.randn(5, 7, LATENT_DIM, dtype=torch.float64)
    alpha = torch.rand(5, 7, 1, dtype=torch.float64)
    alpha[0, 0] = 0.0
    latent[0, 0] = 0.0  # an empty pixel: its feature is 0 and its cosines 0, not NaN
    text = torch.randn(4, 32, dtype=torch.float64)
    weight, bias = affine_form(head)
    torch.testing.assert_close(head(latent), latent @ weight.T + bias)
    explicit = losses.segmentation_logits(head.render(latent, alpha), text)
    scored = latent_space_logits(latent, alpha, head, text)
    torch.testing.assert_close(scored, explicit, rtol=1e-9, atol=1e-10)
    # The expanded norm of a zero feature rounds to ~1e-17, not 0: the cosines stay ~0, finite.
    assert scored[0, 0].abs().max() < 1e-10


def test_initial_scales_follow_the_nearest_neighbours():
    points = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]])
    torch.testing.assert_close(nearest_neighbour_distance(points, k=1), torch.tensor([1.0, 1.0, 2.0]))
    torch.testing.assert_close(nearest_neighbour_distance(points, k=2, chunk=2), torch.tensor([2.0, 1.5, 2.5]))
    torch.testing.assert_close(nearest_neighbour_distance(points[:1], k=3), torch.ones(1))


def test_rendering_gives_every_output_with_latents_free_of_background():
    m = model()
    m.eval()
    viewmats, Ks, width, height = cameras()
    background = torch.ones(2, 3)
    outputs = m.render(viewmats, Ks, width, height, background=background)
    assert outputs["rgb"].shape == (2, height, width, 3) and outputs["alpha"].shape == (2, height, width, 1)
    assert outputs["clip_latent"].shape == (2, height, width, LATENT_DIM)
    assert outputs["selection"].shape == (2, height, width, NUM_SCALES)
    assert outputs["logits"].shape == (2, height, width, 4)
    torch.testing.assert_close(outputs["selection"].sum(-1), torch.ones(2, height, width))
    assert torch.all(outputs["clip_latent"] == 0)  # zero latents, and no background in latent channels
    assert outputs["alpha"].max() > 0.5 and outputs["alpha"].min() < 1
    # Where nothing is hit, RGB is the background.
    empty = outputs["alpha"][..., 0] == 0
    if empty.any():
        torch.testing.assert_close(outputs["rgb"][empty], torch.ones(int(empty.sum()), 3))


def test_phases_freeze_the_schedule_groups():
    m = model(reconstruction=2, frozen=2, joint=2)
    for step, phase in ((0, Phase.RECONSTRUCTION), (2, Phase.SEGMENTATION_FROZEN), (5, Phase.SEGMENTATION_JOINT)):
        m.enter_step(step)
        assert m.phase is phase
        trainable = {group for group, params in m.param_groups().items() if all(p.requires_grad for p in params)}
        assert trainable == set(SPLAT_TRAINABLE[phase])
    assert not set(GEOMETRY_GROUPS) & set(SPLAT_TRAINABLE[Phase.SEGMENTATION_JOINT])


def test_three_phases_train_only_their_groups_with_the_shared_losses():
    torch.manual_seed(1)
    m = model(reconstruction=2, frozen=2, joint=2)
    m.train()
    viewmats, Ks, width, height = cameras()
    image = torch.rand(2, height, width, 3)
    pixels = torch.stack([torch.randint(0, 2, (20,)), torch.randint(0, height, (20,)), torch.randint(0, width, (20,))], -1)
    batch = {
        "image": image,
        "pixels": pixels,
        "clip_targets": torch.randn(20, NUM_SCALES, TEXT_DIM),
        "relevancy": torch.rand(20, NUM_SCALES, 4),
        "dino_tokens": torch.randn(2, 4, 8),
    }
    optimizers = {group: torch.optim.Adam(params, lr=1e-2) for group, params in m.param_groups().items()}
    seen_keys = {}
    for step in range(6):
        m.enter_step(step)
        before = {group: [p.detach().clone() for p in params] for group, params in m.param_groups().items()}
        outputs = m.render(viewmats, Ks, width, height)
        patch_K = Ks.clone()
        patch_K[:, 0, 2] -= 4  # an 8x8 patch camera at (4, 2) of each view
        patch_K[:, 1, 2] -= 2
        patches = m.render(viewmats, patch_K, 8, 8) if m.segmenting else None
        loss_dict = m.loss_dict(outputs, batch, patches)
        seen_keys[m.phase] = set(loss_dict)
        assert all(torch.isfinite(v) for v in loss_dict.values()), loss_dict
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        sum(loss_dict.values()).backward()
        for group, optimizer in optimizers.items():
            if group in SPLAT_TRAINABLE[m.phase]:
                optimizer.step()
        for group, params in m.param_groups().items():
            changed = any(not torch.equal(a, p) for a, p in zip(before[group], params))
            if group not in SPLAT_TRAINABLE[m.phase]:
                assert not changed and all(p.grad is None for p in params), (step, group)
            elif group != "quats":  # identity rotations of round Gaussians: a zero gradient, rightly
                assert changed, (step, group)
    assert seen_keys[Phase.RECONSTRUCTION] == {"rgb"}
    assert seen_keys[Phase.SEGMENTATION_FROZEN] == {"clip", "rda", "fda_pos", "fda_neg"}
    assert seen_keys[Phase.SEGMENTATION_JOINT] == {"rgb", "clip", "rda", "fda_pos", "fda_neg"}


def test_fda_refuses_tokens_that_do_not_tile_the_patch():
    m = model()
    m.enter_step(3)
    viewmats, Ks, _, _ = cameras()
    patches = m.render(viewmats, Ks, 8, 8)
    with pytest.raises(ValueError, match="tokens"):
        m.fda_terms(patches, torch.randn(2, 3, 8))


def test_loading_another_number_of_gaussians_keeps_the_optimizers_bound():
    """nerfstudio builds optimizers before it loads a checkpoint; the Parameters must survive the load."""
    m = model(count=40)
    saved = model(count=55).state_dict()
    saved["gaussians.params.clip_latent"] = torch.randn(55, LATENT_DIM)
    live = dict(m.gaussians.params.items())
    optimizer = torch.optim.SGD([live["clip_latent"]], lr=1.0)
    m.load_state_dict(saved)
    assert m.gaussians.num_gaussians == 55
    assert all(m.gaussians.params[name] is param for name, param in live.items())
    torch.testing.assert_close(m.gaussians.params["clip_latent"].data, saved["gaussians.params.clip_latent"])
    m.gaussians.params["clip_latent"].grad = torch.ones(55, LATENT_DIM)
    optimizer.step()
    torch.testing.assert_close(m.gaussians.params["clip_latent"].data, saved["gaussians.params.clip_latent"] - 1)
