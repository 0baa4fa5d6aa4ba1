"""The CLIP head applied to rendered appearance equals rendering the per-sample head outputs."""

from __future__ import annotations

import pytest
import torch

from ovs3d_nerfstudio.field import ClipHead


@pytest.mark.parametrize("num_layers", [1, 3])
def test_head_after_rendering_equals_rendering_the_head(num_layers: int):
    torch.manual_seed(0)
    head = ClipHead(in_dim=6, out_dim=5, num_layers=num_layers, hidden_dim=7).double()
    appearance = torch.randn(4, 9, 6, dtype=torch.float64)  # rays x samples x features
    weights = torch.rand(4, 9, 1, dtype=torch.float64) * 0.2  # accumulation < 1: the bias term matters
    reference = (weights * head(appearance)).sum(dim=-2)  # Eq. 1 per sample, literally
    rendered = head.render((weights * appearance).sum(dim=-2), weights.sum(dim=-2))
    torch.testing.assert_close(rendered, reference)

    grads_reference = torch.autograd.grad(reference.square().sum(), list(head.parameters()))
    grads_rendered = torch.autograd.grad(
        head.render((weights * appearance).sum(dim=-2), weights.sum(dim=-2)).square().sum(), list(head.parameters())
    )
    for expected, actual in zip(grads_reference, grads_rendered, strict=True):
        torch.testing.assert_close(actual, expected)


def test_official_layout_is_three_linear_layers_without_activations():
    head = ClipHead(in_dim=32, out_dim=512)
    assert [type(layer).__name__ for layer in head.layers] == ["Linear"] * 3
    assert [(layer.in_features, layer.out_features) for layer in head.layers] == [(32, 128), (128, 128), (128, 512)]


def test_zero_layers_is_refused():
    with pytest.raises(ValueError, match="at least one layer"):
        ClipHead(in_dim=4, out_dim=4, num_layers=0)
