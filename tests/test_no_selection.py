"""The no-selection ablation (``--pipeline.model.use-selection False``, paper Table 4).

The scales are averaged instead of selected: every ray's selection is uniform, so the CLIP
loss compares the rendered feature with the mean of the scale targets, and nothing trains the
selection volume.
"""

from __future__ import annotations

import torch

from nerfstudio.data.scene_box import SceneBox

from ovs3d_nerfstudio import losses
from ovs3d_nerfstudio.model import Ovs3dModel, Ovs3dModelConfig
from ovs3d_nerfstudio.schedule import Phase, ScheduleConfig
from tiny_run import TINY_TRAINING, below, random_rays

LABELS, SCALES, DIM, RAYS = ["red apple", "green lawn", "wood wall"], 3, 16, 32


def tiny_model(use_selection: bool) -> Ovs3dModel:
    torch.manual_seed(0)
    config = Ovs3dModelConfig(
        use_selection=use_selection,
        schedule=ScheduleConfig(reconstruction_steps=1, frozen_steps=2, joint_steps=2),
        **below("pipeline.model.", TINY_TRAINING),
    )
    metadata = {"labels": LABELS, "num_scales": SCALES, "text_features": torch.randn(len(LABELS), DIM)}
    model = config.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4, metadata=metadata)
    model.train()
    model.enter_step(1)  # segmentation, frozen phase: the selection volume is trainable
    assert model.phase is Phase.SEGMENTATION_FROZEN
    return model


def batch() -> dict:
    generator = torch.Generator().manual_seed(2)
    return {
        "image": torch.rand(RAYS, 3, generator=generator),
        "num_random_rays": RAYS,
        "clip_targets": torch.randn(RAYS, SCALES, DIM, generator=generator),
        "relevancy": torch.rand(RAYS, SCALES, len(LABELS), generator=generator),
    }


def test_without_selection_the_scales_are_averaged_and_the_volume_gets_no_gradient():
    model = tiny_model(use_selection=False)
    outputs = model(random_rays(RAYS))
    torch.testing.assert_close(outputs["selection"], torch.full((RAYS, SCALES), 1.0 / SCALES))
    loss_dict = model.get_loss_dict(outputs, batch())
    uniform = torch.full((RAYS, SCALES), 1.0 / SCALES)
    expected = losses.clip_supervision_loss(
        outputs["clip"], batch()["clip_targets"], uniform, normalize_scales=model.normalize_scale_targets
    )
    torch.testing.assert_close(loss_dict["clip"], model.config.clip_loss_mult * expected)
    sum(loss_dict.values()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.field.selection_volume.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.clip_head.parameters())  # the rest trains


def test_with_selection_the_scales_are_chosen_per_ray_and_the_volume_trains():
    """The same model with the selection on: what the ablation switches off."""
    model = tiny_model(use_selection=True)
    outputs = model(random_rays(RAYS))
    assert not torch.allclose(outputs["selection"], torch.full((RAYS, SCALES), 1.0 / SCALES))
    torch.testing.assert_close(outputs["selection"].sum(-1), torch.ones(RAYS))
    sum(model.get_loss_dict(outputs, batch()).values()).backward()
    assert any(p.grad is not None and p.grad.any() for p in model.field.selection_volume.parameters())
