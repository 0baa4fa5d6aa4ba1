"""Eqs. 6-7 against literal float64 loops (values and gradients), plus the degenerate maps."""

from __future__ import annotations

import torch

from ovs3d_nerfstudio.features.relevancy import class_cosines, minmax_normalize, normalized_relevancy_maps, relevancy
from ovs3d_nerfstudio.losses import segmentation_logits

f64 = torch.float64


def lit_cos(a, b):
    return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()))


def lit_relevancy_chw(features, text):
    """Eq. 6 without S for [Ns, D, H, W] features: out[s, c, h, w] = cos(T_c, F_s[:, h, w])."""
    scales, _, height, width = features.shape
    return torch.stack(
        [
            torch.stack(
                [
                    torch.stack(
                        [torch.stack([lit_cos(text[c], features[s, :, h, w]) for w in range(width)]) for h in range(height)]
                    )
                    for c in range(text.shape[0])
                ]
            )
            for s in range(scales)
        ]
    )


def lit_minmax(maps):
    """Eq. 7 for [..., C, H, W]: every [H, W] map to (R - min R) / (max R - min R)."""
    flat = maps.reshape(-1, *maps.shape[-2:])
    return torch.stack([(m - m.min()) / (m.max() - m.min()) for m in flat]).reshape(maps.shape)


def test_relevancy_matches_literal_both_layouts():
    torch.manual_seed(0)
    features = torch.randn(2, 6, 3, 4, dtype=f64, requires_grad=True)
    text = torch.randn(5, 6, dtype=f64, requires_grad=True)
    ours = relevancy(features, text, feature_dim=1)
    ref = lit_relevancy_chw(features, text)
    assert ours.shape == (2, 5, 3, 4)
    torch.testing.assert_close(ours, ref)
    weight = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad((ours * weight).sum(), (features, text)),
        torch.autograd.grad((ref * weight).sum(), (features, text)),
    ):
        torch.testing.assert_close(a, b)
    channel_last = relevancy(features.detach().permute(0, 2, 3, 1), text.detach())
    torch.testing.assert_close(channel_last, ref.detach().permute(0, 2, 3, 1))


def test_relevancy_zero_features_give_zero_and_finite_grads():
    features = torch.zeros(1, 4, 2, 2, requires_grad=True)
    out = relevancy(features, torch.randn(3, 4), feature_dim=1)
    assert (out == 0).all()
    assert torch.isfinite(torch.autograd.grad(out.sum(), features)[0]).all()


def test_minmax_matches_literal():
    torch.manual_seed(1)
    maps = torch.randn(2, 3, 4, 5, dtype=f64, requires_grad=True)
    ours = minmax_normalize(maps)
    ref = lit_minmax(maps)
    torch.testing.assert_close(ours, ref)
    assert ours.amin(dim=(-2, -1)).eq(0).all() and ours.amax(dim=(-2, -1)).eq(1).all()
    weight = torch.randn_like(ref)
    torch.testing.assert_close(
        torch.autograd.grad((ours * weight).sum(), maps)[0],
        torch.autograd.grad((ref * weight).sum(), maps)[0],
    )


def test_minmax_constant_map_gives_zeros():
    maps = torch.randn(3, 4, 4, dtype=f64)
    maps[1] = 0.25  # constant class map
    maps.requires_grad_()
    out = minmax_normalize(maps)
    assert (out[1] == 0).all()
    torch.testing.assert_close(out[[0, 2]], lit_minmax(maps[[0, 2]]))
    grad = torch.autograd.grad(out.sum(), maps)[0]
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


def test_normalized_maps_equal_eq6_then_eq7():
    torch.manual_seed(2)
    dense = torch.randn(3, 5, 7, 8, dtype=f64)
    text = torch.randn(4, 8, dtype=f64)
    ref = lit_minmax(lit_relevancy_chw(dense.permute(0, 3, 1, 2), text)).float()
    for chunk_pixels in (1, 6, 35, 1000):  # 6 does not divide H * W = 35
        ours = normalized_relevancy_maps(dense, text, chunk_pixels=chunk_pixels)
        assert ours.shape == (3, 4, 5, 7) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref)


def test_normalized_maps_half_input_and_degenerate_pixels():
    torch.manual_seed(3)
    dense = torch.randn(2, 6, 6, 16)
    dense[0, :2] = 0  # zero features: cosine 0, still normalised without NaN
    dense[1] = dense[1, :1, :1]  # every pixel identical: constant maps -> zeros
    text = torch.randn(3, 16)
    out = normalized_relevancy_maps(dense.half(), text, chunk_pixels=7)
    assert torch.isfinite(out).all()
    assert (out >= 0).all() and (out <= 1).all()
    assert (out[1] == 0).all()
    torch.testing.assert_close(out, normalized_relevancy_maps(dense.half().float(), text))


def test_pixel_features_are_compared_with_text_exactly_like_rendered_ones():
    """Eq. 6's cosine (features/) and Eq. 4's logits (losses.py) are one cosine, zero features included."""
    features, text = torch.randn(5, 7, 16), torch.randn(4, 16)
    features[0, 0] = 0.0
    torch.testing.assert_close(class_cosines(features, text), segmentation_logits(features, text), atol=0, rtol=0)
    literal = torch.stack([torch.stack([lit_cos(text[c].double(), f.double()) for c in range(4)]) for f in features[1]])
    torch.testing.assert_close(class_cosines(features, text)[1].double(), literal)
    assert bool((class_cosines(features, text)[0, 0] == 0).all())
