"""The model's loss wiring for the options beyond the paper and the variants that switch them.

`selection-training dino-purity`: the selection volume is trained by the selection loss alone;
`rda-target sharpened`: RDA's target uses Eq. 10's tau; `fda-start joint`: no FDA terms in the
frozen phase. Each is checked against the loss functions of `losses.py` on a tiny model.
"""

from __future__ import annotations

import pytest
import torch

from nerfstudio.data.scene_box import SceneBox

from ovs3d_nerfstudio import losses
from ovs3d_nerfstudio.model import Ovs3dModel, Ovs3dModelConfig
from ovs3d_nerfstudio.schedule import Phase, ScheduleConfig
from tiny_run import TINY_TRAINING, below, random_rays

LABELS, SCALES, DIM, RAYS = ["red apple", "green lawn", "wood wall"], 3, 16, 24
PATCHES, TOKENS, DINO_DIM = 2, 4, 8


def tiny_model(step: int, **options) -> Ovs3dModel:
    torch.manual_seed(0)
    config = Ovs3dModelConfig(
        schedule=ScheduleConfig(reconstruction_steps=1, frozen_steps=2, joint_steps=2),
        **{**below("pipeline.model.", TINY_TRAINING), **options},
    )
    metadata = {"labels": LABELS, "num_scales": SCALES, "text_features": torch.randn(len(LABELS), DIM)}
    model = config.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4, metadata=metadata)
    model.train()
    model.enter_step(step)
    return model


def batch(with_patches: bool = False, with_selection_target: bool = False) -> dict:
    generator = torch.Generator().manual_seed(2)
    out = {
        "image": torch.rand(RAYS, 3, generator=generator),
        "num_random_rays": RAYS,
        "clip_targets": torch.randn(RAYS, SCALES, DIM, generator=generator),
        "relevancy": torch.rand(RAYS, SCALES, len(LABELS), generator=generator),
    }
    if with_patches:
        out["dino_tokens"] = torch.randn(PATCHES, TOKENS, DINO_DIM, generator=generator)
    if with_selection_target:
        out["selection_target"] = torch.softmax(torch.randn(RAYS, SCALES, generator=generator), dim=-1)
    return out


def selection_grad(model: Ovs3dModel, loss: torch.Tensor) -> float:
    model.zero_grad()
    loss.backward(retain_graph=True)
    return sum(float(p.grad.abs().sum()) for p in model.field.selection_volume.parameters() if p.grad is not None)


def test_purity_training_moves_the_selection_only_through_the_selection_loss():
    model = tiny_model(step=1, selection_training="dino-purity")
    outputs = model(random_rays(RAYS))
    given = batch(with_selection_target=True)
    loss_dict = model.get_loss_dict(outputs, given)
    expected = losses.selection_loss(outputs["selection"], given["selection_target"])
    torch.testing.assert_close(loss_dict["selection"], expected)
    assert selection_grad(model, loss_dict["clip"]) == 0.0
    assert selection_grad(model, loss_dict["rda"]) == 0.0
    assert selection_grad(model, loss_dict["selection"]) > 0.0


def test_supervision_training_moves_the_selection_through_eq_3():
    model = tiny_model(step=1, selection_training="supervision")
    loss_dict = model.get_loss_dict(model(random_rays(RAYS)), batch())
    assert "selection" not in loss_dict
    assert selection_grad(model, loss_dict["clip"]) > 0.0


@pytest.mark.parametrize(("variant", "logits", "sharpened"), [("default", "dot", True), ("paper", "cosine", False)])
def test_rda_uses_the_variants_logits_and_target(variant, logits, sharpened):
    model = tiny_model(step=1, variant=variant, selection_training="supervision")
    outputs = model(random_rays(RAYS))
    given = batch()
    relevancy = losses.selected_relevancy(given["relevancy"], outputs["selection"])
    z = outputs["logits"] if logits == "cosine" else losses.dot_product_logits(outputs["clip"], model.text_features)
    sharpening = model.config.fda_temperature if sharpened else None
    expected = model.config.rda_loss_mult * losses.rda_loss(z, relevancy, sharpening)
    torch.testing.assert_close(model.get_loss_dict(outputs, given)["rda"], expected)


@pytest.mark.parametrize(("fda_start", "frozen_has_fda"), [("frozen", True), ("joint", False)])
def test_fda_start_decides_whether_the_frozen_phase_has_fda(fda_start, frozen_has_fda):
    for step, phase in ((1, Phase.SEGMENTATION_FROZEN), (3, Phase.SEGMENTATION_JOINT)):
        model = tiny_model(step=step, fda_start=fda_start)
        assert model.phase is phase
        loss_dict = model.get_loss_dict(model(random_rays(RAYS + PATCHES * TOKENS)), batch(with_patches=True))
        expected = phase is Phase.SEGMENTATION_JOINT or frozen_has_fda
        assert ("fda_pos" in loss_dict and "fda_neg" in loss_dict) == expected, (fda_start, phase)
