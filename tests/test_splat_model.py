"""The ``ovs3d-splat`` model on a handful of Gaussians, without a datamanager: phases, losses,
latent-space scoring, labels, and splatfacto's traps (LPIPS download, ``.cuda()``, optimizers
left bound to replaced parameters, the strategy's unfrozen parameters)."""

from __future__ import annotations

import pytest
import torch

from gsplat.strategy import ops as strategy_ops
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.models.splatfacto import SplatfactoModel

from ovs3d_nerfstudio import losses
from ovs3d_nerfstudio.config import AdamBetasOptimizerConfig
from ovs3d_nerfstudio.errors import ConfigError
from ovs3d_nerfstudio.field import ClipHead
from ovs3d_nerfstudio.schedule import Phase
from ovs3d_nerfstudio.splat.gaussians import nearest_neighbour_distance
from ovs3d_nerfstudio.splat.model import (
    GEOMETRY_GROUPS,
    SPLAT_TRAINABLE,
    Ovs3dSplatModel,
    Ovs3dSplatModelConfig,
    SplatScheduleConfig,
    world_to_camera,
)
from ovs3d_nerfstudio.splat.scoring import affine_form, latent_space_logits

LABELS, SCALES, DIM, LATENT = ["red apple", "green lawn", "wood wall"], 3, 16, 6
WIDTH, HEIGHT, PIXELS, PATCHES, TOKENS, DINO_DIM = 16, 12, 20, 2, 4, 8


def seed_points(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    points = (torch.rand(count, 3, generator=generator) - 0.5) * torch.tensor([1.0, 0.8, 0.5]) + torch.tensor([0, 0, -2.0])
    return points, (torch.rand(count, 3, generator=generator) * 255).to(torch.uint8)


def tiny_model(step: int = 0, count: int = 60, **options) -> Ovs3dSplatModel:
    torch.manual_seed(0)
    settings = dict(latent_dim=LATENT, clip_head_width=8, num_downscales=0, background_color="black")
    config = Ovs3dSplatModelConfig(
        schedule=SplatScheduleConfig(reconstruction_steps=2, frozen_steps=2, joint_steps=2), **{**settings, **options}
    )
    metadata = {"labels": LABELS, "num_scales": SCALES, "text_features": torch.randn(len(LABELS), DIM)}
    model = config.setup(
        scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4, metadata=metadata,
        seed_points=seed_points(count),
    )  # fmt: skip
    with torch.no_grad():  # segmentation outputs that differ between pixels
        model.gauss_params["clip_latent"].normal_()
        model.gauss_params["selection"].normal_()
        model.gauss_params["opacities"].fill_(0.5)
    model.train()
    model.enter_step(step)
    return model


def camera(width: int = WIDTH, height: int = HEIGHT, count: int = 1) -> Cameras:
    """Cameras at the origin looking down -z (nerfstudio's convention) at the seed points."""
    pose = torch.eye(4)[:3].repeat(count, 1, 1)
    pose[:, 0, 3] = torch.linspace(-0.05, 0.05, count)
    return Cameras(
        camera_to_worlds=pose, fx=14.0, fy=14.0, cx=width / 2, cy=height / 2, width=width, height=height,
        camera_type=CameraType.PERSPECTIVE,
    )  # fmt: skip


def batch(with_selection_target: bool = False) -> dict:
    generator = torch.Generator().manual_seed(2)
    flat = torch.randperm(WIDTH * HEIGHT, generator=generator)[:PIXELS]
    out = {
        "image": torch.rand(HEIGHT, WIDTH, 3, generator=generator),
        "pixels": torch.stack([flat // WIDTH, flat % WIDTH], dim=-1),
        "clip_targets": torch.randn(PIXELS, SCALES, DIM, generator=generator),
        "relevancy": torch.rand(PIXELS, SCALES, len(LABELS), generator=generator),
        "patch_cameras": camera(8, 8, PATCHES),
        "dino_tokens": torch.randn(PATCHES, TOKENS, DINO_DIM, generator=generator),
    }
    if with_selection_target:
        out["selection_target"] = torch.softmax(torch.randn(PIXELS, SCALES, generator=generator), dim=-1)
    return out


def test_latent_space_logits_equal_the_explicit_cosines_of_eq_4():
    torch.manual_seed(0)
    head = ClipHead(LATENT, 32, num_layers=3, hidden_dim=8).double()
    latent = torch.randn(5, 7, LATENT, dtype=torch.float64)
    alpha = torch.rand(5, 7, 1, dtype=torch.float64)
    alpha[0, 0] = 0.0
    latent[0, 0] = 0.0  # an empty pixel: its feature is 0 and its cosines 0, not NaN
    text = torch.randn(4, 32, dtype=torch.float64)
    weight, bias = affine_form(head)
    torch.testing.assert_close(head(latent), latent @ weight.T + bias)
    explicit = losses.segmentation_logits(head.render(latent, alpha), text)
    scored = latent_space_logits(latent, alpha, head, text)
    torch.testing.assert_close(scored, explicit, rtol=1e-9, atol=1e-10)
    assert scored[0, 0].abs().max() < 1e-10


def test_initial_scales_follow_the_nearest_neighbours():
    points = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]])
    torch.testing.assert_close(nearest_neighbour_distance(points, k=1), torch.tensor([1.0, 1.0, 2.0]))
    torch.testing.assert_close(nearest_neighbour_distance(points, k=2, chunk=2), torch.tensor([2.0, 1.5, 2.5]))
    torch.testing.assert_close(nearest_neighbour_distance(points[:1], k=3), torch.ones(1))


def test_view_matrix_puts_points_ahead_of_a_nerfstudio_camera_at_positive_depth():
    pose = torch.eye(4)[:3][None].clone()
    pose[0, :3, 3] = torch.tensor([1.0, 2.0, 3.0])
    viewmat = world_to_camera(pose)[0]
    ahead_and_up = torch.tensor([1.0, 2.5, 1.0, 1.0])  # 2 units down -z, 0.5 up
    x, y, z, _ = (viewmat @ ahead_and_up).tolist()
    assert (x, y, z) == pytest.approx((0.0, -0.5, 2.0))  # OpenCV axes: y down, z forward
    torch.testing.assert_close(torch.linalg.inv(viewmat)[:3, 3], pose[0, :3, 3])


def test_initial_gaussians_sit_on_the_seed_points_with_their_colours():
    model = tiny_model()
    points, colours = seed_points(60)
    torch.testing.assert_close(model.gauss_params["means"].data, points)
    torch.testing.assert_close(model.colors, colours.float() / 255, atol=2e-3, rtol=0)
    assert model.gauss_params["clip_latent"].shape == (60, LATENT)
    assert model.gauss_params["selection"].shape == (60, SCALES)
    assert model.gauss_params["features_rest"].shape == (60, 0, 3)


def test_phases_freeze_the_schedule_groups_and_the_freezing_survives_the_strategy():
    model = tiny_model()
    for step, phase in [(0, Phase.RECONSTRUCTION), (2, Phase.SEGMENTATION_FROZEN), (4, Phase.SEGMENTATION_JOINT)]:
        model.enter_step(step)
        assert model.phase is phase
        trainable = {group for group, params in model.get_param_groups().items() if all(p.requires_grad for p in params)}
        assert trainable == set(SPLAT_TRAINABLE[phase])
    assert not set(GEOMETRY_GROUPS) & set(SPLAT_TRAINABLE[Phase.SEGMENTATION_JOINT])
    # gsplat's strategy operations hand back parameters that require gradients (the trap);
    # the next step's enter_step freezes them again.
    optimizers = {name: torch.optim.Adam([p], lr=1e-3) for name, p in model.gauss_params.items()}
    strategy_ops.duplicate(model.gauss_params, optimizers, {}, torch.ones(60, dtype=torch.bool))
    assert model.gauss_params["means"].requires_grad and model.num_points == 120
    model.enter_step(5)
    assert not any(model.gauss_params[name].requires_grad for name in GEOMETRY_GROUPS)


def test_segmentation_renders_labels_scored_in_the_latent_space():
    model = tiny_model(step=4).eval()
    outputs = model.get_outputs_for_camera(camera())
    assert next(iter(outputs)) == "labels"
    assert "clip_latent" not in outputs and "logits" not in outputs  # losses' inputs, not images
    rendered = model.render(camera(), segmentation=True)
    explicit = losses.segmentation_logits(
        model.clip_head.render(rendered["clip_latent"][0], rendered["accumulation"][0]), model.text_features
    )
    # Where nothing is hit the explicit feature is rounding noise (head(0) - b) and its cosines
    # arbitrary; the latent-space cosines are exactly 0 there, so the classes tie.
    hit = rendered["accumulation"][0, ..., 0] > 1e-3
    assert 0 < int(hit.sum()) < hit.numel()
    probabilities = outputs["class_probabilities"]
    torch.testing.assert_close(probabilities[hit], torch.softmax(explicit, dim=-1)[hit], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["labels"][hit], model.label_colours[explicit.argmax(-1)][hit])
    torch.testing.assert_close(probabilities[~hit], torch.full_like(probabilities[~hit], 1 / len(LABELS)))
    assert outputs["rgb"].shape == (HEIGHT, WIDTH, 3) and outputs["labels_overlay"].shape == (HEIGHT, WIDTH, 3)
    assert float(outputs["accumulation"].max()) > 0.5  # the Gaussians are in view


def test_reconstruction_renders_no_segmentation_and_keeps_splatfacto_loss():
    model = tiny_model(step=0)
    outputs = model(camera())
    assert "clip_latent" not in outputs and "labels" not in outputs
    loss_dict = model.get_loss_dict(outputs, batch(), model.get_metrics_dict(outputs, batch()))
    assert set(loss_dict) == {"main_loss", "scale_reg"}
    l1 = (outputs["rgb"] - batch()["image"]).abs().mean()
    ssim = model.ssim(batch()["image"].permute(2, 0, 1)[None], outputs["rgb"].permute(2, 0, 1)[None])
    torch.testing.assert_close(loss_dict["main_loss"], 0.8 * l1 + 0.2 * (1 - ssim))


@pytest.mark.parametrize("step, expected", [(2, {"clip", "rda", "fda_pos", "fda_neg"}), (4, {"main_loss", "scale_reg", "clip", "rda", "fda_pos", "fda_neg"})])
def test_segmentation_losses_are_the_shared_functions_at_the_sampled_pixels(step, expected):
    model = tiny_model(step=step, variant="paper")
    data = batch()
    outputs = model(camera())
    loss_dict = model.get_loss_dict(outputs, data)
    assert set(loss_dict) == expected
    row, column = data["pixels"].unbind(-1)
    clip = model.clip_head.render(outputs["clip_latent"][row, column], outputs["accumulation"][row, column])
    selection = outputs["selection"][row, column]
    torch.testing.assert_close(loss_dict["clip"], losses.clip_supervision_loss(clip, data["clip_targets"], selection))
    logits = latent_space_logits(outputs["clip_latent"][row, column], outputs["accumulation"][row, column], model.clip_head, model.text_features)
    relevancy = losses.selected_relevancy(data["relevancy"], selection)
    torch.testing.assert_close(loss_dict["rda"], losses.rda_loss(logits, relevancy, None))
    total = sum(loss_dict.values())
    total.backward()
    assert model.gauss_params["clip_latent"].grad.abs().sum() > 0
    assert model.gauss_params["means"].grad is None  # geometry frozen in segmentation


def test_fda_pools_patch_renders_to_the_token_grid():
    model = tiny_model(step=2)
    data = batch()
    pos, neg = model.fda_terms(data["patch_cameras"], data["dino_tokens"])
    rendered = model.render(data["patch_cameras"], segmentation=True)
    pooled = torch.nn.functional.avg_pool2d(
        model.clip_head.render(rendered["clip_latent"], rendered["accumulation"]).permute(0, 3, 1, 2), 4
    ).flatten(2).transpose(1, 2)
    expected = model.fda_from_logits(losses.segmentation_logits(pooled, model.text_features), data["dino_tokens"])
    torch.testing.assert_close((pos, neg), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="tokens"):
        model.fda_terms(data["patch_cameras"], torch.randn(PATCHES, 3, DINO_DIM))


def test_dino_purity_trains_the_selection_alone():
    model = tiny_model(step=2, variant="default")
    outputs = model(camera())
    loss_dict = model.get_loss_dict(outputs, batch(with_selection_target=True))
    assert "selection" in loss_dict
    loss_dict["clip"].backward(retain_graph=True)
    assert model.gauss_params["selection"].grad is None or model.gauss_params["selection"].grad.abs().sum() == 0


def test_gaussian_labels_score_each_gaussians_own_clip_feature():
    model = tiny_model(step=4).eval()
    expected = losses.segmentation_logits(model.clip_head(model.gauss_params["clip_latent"]), model.text_features).argmax(-1)
    torch.testing.assert_close(model.gaussian_labels(), expected)


def test_click_readout_renders_the_ray_through_a_pixel():
    model = tiny_model(step=4).eval()
    full = model.get_outputs_for_camera(camera())["class_probabilities"]
    ray = camera().generate_rays(camera_indices=0, coords=torch.tensor([[6.5, 8.5]]))
    probabilities = model.class_probabilities_along_ray(ray.origins[0], ray.directions[0])
    assert probabilities.shape == (len(LABELS),) and float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    assert int(probabilities.argmax()) == int(full[6, 8].argmax())


# ------------------------------------------------------------------------------ traps
def test_no_lpips_is_built_and_eval_metrics_need_none(monkeypatch):
    """splatfacto builds LPIPS, which downloads AlexNet: offline it fails."""
    from torchmetrics.image import lpip

    def refuse(*args, **kwargs):
        raise RuntimeError("LPIPS would download AlexNet")

    monkeypatch.setattr(lpip.LearnedPerceptualImagePatchSimilarity, "__init__", refuse)
    model = tiny_model(step=4).eval()
    outputs = model.get_outputs_for_camera(camera())
    metrics, images = model.get_image_metrics_and_images(outputs, {"image": torch.rand(HEIGHT, WIDTH, 3)})
    assert set(metrics) == {"psnr", "ssim"} and "labels" in images


def test_nothing_calls_cuda(monkeypatch):
    """splatfacto hard-codes ``.cuda()`` in its seeded initialisation and rendering."""

    def refuse(*args, **kwargs):
        raise AssertionError(".cuda() called")

    monkeypatch.setattr(torch.Tensor, "cuda", refuse)
    model = tiny_model(step=0)  # seeded initialisation
    model.get_loss_dict(model(camera()), batch())["main_loss"].backward()
    model.enter_step(4)
    model.get_loss_dict(model(camera()), batch())
    model.eval().get_outputs_for_camera(camera())


def test_loading_another_number_of_gaussians_keeps_the_optimizers_bound():
    """nerfstudio builds optimizers before it loads a checkpoint; splatfacto's load swaps in new
    Parameters, so a resumed run would train dead copies. This model resizes in place."""
    model = tiny_model(count=40)
    saved = {f"_model.{key}": value for key, value in tiny_model(count=55).state_dict().items()}
    saved["_model.gauss_params.clip_latent"] = torch.randn(55, LATENT)
    config = {name: {"optimizer": AdamBetasOptimizerConfig(lr=1.0), "scheduler": None} for name in model.get_param_groups()}
    optimizers = Optimizers(config, model.get_param_groups())
    model.load_state_dict({key[len("_model.") :]: value for key, value in saved.items()})
    assert model.num_points == 55
    for name, param in model.gauss_params.items():
        assert optimizers.optimizers[name].param_groups[0]["params"][0] is param, name
    torch.testing.assert_close(model.gauss_params["clip_latent"].data, saved["_model.gauss_params.clip_latent"])
    model.gauss_params["clip_latent"].grad = torch.ones(55, LATENT)
    optimizers.optimizers["clip_latent"].step()
    assert not torch.equal(model.gauss_params["clip_latent"].data, saved["_model.gauss_params.clip_latent"])
    # The trap this guards against: splatfacto's own load leaves the optimizers on old tensors.
    SplatfactoModel.load_state_dict(model, {key[len("_model.") :]: value for key, value in saved.items()})
    assert optimizers.optimizers["means"].param_groups[0]["params"][0] is not model.gauss_params["means"]


@pytest.mark.parametrize("device, absgrad, threshold", [("cpu", False, 3e-4), ("cuda", True, 7e-4)])
def test_densification_threshold_follows_the_gradients_gsplat_computes(device, absgrad, threshold, monkeypatch):
    """Absolute screen-space gradients (CUDA) are larger than plain ones (the CPU rasterizer):
    each kind is compared with its own threshold."""
    model = tiny_model(densify_grad_thresh=7e-4, densify_grad_thresh_plain=3e-4)
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device(device)))
    model.use_densification_gradients()
    assert model.strategy.absgrad is absgrad and model.strategy.grow_grad2d == threshold
    model.config.use_absgrad = False  # plain gradients on CUDA too
    model.use_densification_gradients()
    assert model.strategy.absgrad is False and model.strategy.grow_grad2d == 3e-4


@pytest.mark.parametrize(
    "option, value, flag",
    [("sh_degree", 1, "--pipeline.model.sh-degree 1"), ("latent_dim", 0, "--pipeline.model.latent-dim 0"),
     ("rasterize_mode", "antialiased", "--pipeline.model.rasterize-mode antialiased"),
     ("densify_grad_thresh_plain", 0.0, "--pipeline.model.densify-grad-thresh-plain 0.0")],
)  # fmt: skip
def test_bad_options_are_refused_in_one_line(option, value, flag):
    with pytest.raises(ConfigError) as error:
        tiny_model(**{option: value})
    assert flag in str(error.value) and "\n" not in str(error.value)
