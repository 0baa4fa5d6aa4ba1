"""Each loss against a literal float64 transcription of its equation (values and gradients),
plus the degenerate inputs that training produces: one-hots, underflowed softmaxes, zero
features, patches whose DINO correlations are all on one side of the shift."""

from __future__ import annotations

import math

import pytest
import torch

from ovs3d_nerfstudio.losses import (
    centred_clip_supervision_loss,
    clip_supervision_loss,
    dino_correlation,
    dot_product_logits,
    fda_loss,
    fda_loss_dense,
    fda_loss_kl,
    kl_correlation,
    js_divergence,
    rda_loss,
    segmentation_logits,
    selected_relevancy,
    selected_targets,
    selection_loss,
)

f64 = torch.float64


# ---- literal transcriptions (loops, plain formulas) ----


def lit_cos(a, b):
    return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()))


def lit_softmax(z):
    e = torch.exp(z - z.max())
    return e / e.sum()


def lit_js(p, q):
    """Eq. 8 / Eq. 11 for strictly positive probability vectors."""
    m = (p + q) / 2
    return sum((p[c] * torch.log(p[c] / m[c]) + q[c] * torch.log(q[c] / m[c])) / 2 for c in range(len(p)))


def lit_supervision(rendered, targets, selection):
    rays, scales = selection.shape
    terms = []
    for r in range(rays):
        mixed = sum(selection[r, s] * targets[r, s] for s in range(scales))
        terms.append(-lit_cos(rendered[r], mixed))
    return torch.stack(terms).mean()


def lit_correlation(tokens):
    patches, n, _ = tokens.shape
    return torch.stack(
        [
            torch.stack([torch.stack([lit_cos(tokens[p, i], tokens[p, j]) for j in range(n)]) for i in range(n)])
            for p in range(patches)
        ]
    )


def lit_corr_d(logits, tau):
    patches, n, _ = logits.shape
    sharp = [[lit_softmax(logits[p, i] / tau) for i in range(n)] for p in range(patches)]  # Eq. 10
    return torch.stack(
        [
            torch.stack([torch.stack([lit_js(sharp[p][i], sharp[p][j]) for j in range(n)]) for i in range(n)])
            for p in range(patches)
        ]
    )  # Eq. 11


def lit_fda(logits, tokens, tau, shift, lambda_pos, lambda_neg):
    corr_f = lit_correlation(tokens)
    corr_d = lit_corr_d(logits, tau)
    pos_f = torch.where(corr_f - shift > 0, corr_f - shift, torch.zeros_like(corr_f))
    neg_f = torch.where(corr_f - shift < 0, corr_f - shift, torch.zeros_like(corr_f))
    pos = lambda_pos * (pos_f * corr_d).sum() / int((pos_f != 0).sum())
    neg = lambda_neg * (neg_f * corr_d).sum() / int((neg_f != 0).sum())
    return pos, neg


def clustered_tokens(patches, n, dim, dtype=f64, clusters=3, noise=0.6, seed=0):
    """DINO-like tokens: a few clusters, so Corr_F has entries on both sides of 0.7."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g, dtype=dtype)
    labels = torch.randint(0, clusters, (patches, n), generator=g)
    return centres[labels] + noise * torch.randn(patches, n, dim, generator=g, dtype=dtype)


def grads(outputs, inputs):
    return torch.autograd.grad(outputs, inputs, retain_graph=True)


def assert_finite(*tensors):
    for t in tensors:
        assert torch.isfinite(t).all(), t


# ---- Eq. 3 ----


def test_clip_supervision_matches_literal():
    torch.manual_seed(0)
    rendered = torch.randn(6, 8, dtype=f64, requires_grad=True)
    targets = torch.randn(6, 3, 8, dtype=f64, requires_grad=True)
    selection = torch.softmax(torch.randn(6, 3, dtype=f64), -1).requires_grad_()
    ours = clip_supervision_loss(rendered, targets, selection)
    ref = lit_supervision(rendered, targets, selection)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, (rendered, targets, selection)), grads(ref, (rendered, targets, selection))):
        torch.testing.assert_close(a, b)


def test_clip_supervision_valid_mask_and_zero_vectors():
    torch.manual_seed(1)
    rendered = torch.randn(5, 4, dtype=f64)
    rendered[0] = 0
    rendered.requires_grad_()
    targets = torch.randn(5, 2, 4, dtype=f64)
    targets[1] = 0
    selection = torch.full((5, 2), 0.5, dtype=f64, requires_grad=True)
    valid = torch.tensor([True, False, True, True, False])
    loss = clip_supervision_loss(rendered, targets, selection, valid)
    ref = torch.stack([lit_supervision(rendered[r : r + 1], targets[r : r + 1], selection[r : r + 1]) for r in (2, 3)])
    ref = ref.mean()
    torch.testing.assert_close(loss, (ref * 2 + 0) / 3)  # ray 0 has cosine 0, ray 1 is dropped
    assert_finite(loss, *grads(loss, (rendered, selection)))
    none_valid = clip_supervision_loss(rendered, targets, selection, torch.zeros(5, dtype=torch.bool))
    assert none_valid.item() == 0.0
    assert_finite(*grads(none_valid, (rendered,)))


def lit_centred_supervision(rendered, targets, selection):
    rays, scales = selection.shape
    units = []
    for r in range(rays):
        mixed = sum(selection[r, s] * targets[r, s] for s in range(scales))
        units.append(mixed / torch.sqrt((mixed * mixed).sum()))
    centre = (sum(units) / rays).detach()
    terms = []
    for r in range(rays):
        f = rendered[r] / torch.sqrt((rendered[r] * rendered[r]).sum())
        terms.append(-lit_cos(f, units[r]) - lit_cos(f - centre, units[r] - centre))
    return torch.stack(terms).mean()


def test_centred_clip_supervision_matches_literal():
    torch.manual_seed(2)
    rendered = torch.randn(6, 8, dtype=f64, requires_grad=True)
    targets = (torch.randn(6, 3, 8, dtype=f64) + 3.0).requires_grad_()  # a shared component, as CLIP targets have
    selection = torch.softmax(torch.randn(6, 3, dtype=f64), -1).requires_grad_()
    ours = centred_clip_supervision_loss(rendered, targets, selection)
    ref = lit_centred_supervision(rendered, targets, selection)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, (rendered, targets, selection)), grads(ref, (rendered, targets, selection))):
        torch.testing.assert_close(a, b)
    # Rendering only the targets' shared component nearly satisfies Eq. 3 but not the centred half.
    with torch.no_grad():
        perfect = selected_targets(targets, selection)
        common = perfect.mean(0, keepdim=True).expand_as(perfect)
        plain_gap = clip_supervision_loss(common, targets, selection) - clip_supervision_loss(perfect, targets, selection)
        centred_gap = centred_clip_supervision_loss(common, targets, selection) - centred_clip_supervision_loss(perfect, targets, selection)
    assert plain_gap < 0.1 and centred_gap > 0.9
    torch.testing.assert_close(centred_clip_supervision_loss(perfect, targets, selection), torch.tensor(-2.0, dtype=f64))


def test_centred_clip_supervision_valid_mask_and_degenerate_inputs():
    torch.manual_seed(3)
    rendered = torch.randn(5, 4, dtype=f64, requires_grad=True)
    targets = torch.randn(5, 2, 4, dtype=f64)
    selection = torch.full((5, 2), 0.5, dtype=f64, requires_grad=True)
    valid = torch.tensor([True, False, True, True, False])
    loss = centred_clip_supervision_loss(rendered, targets, selection, valid)
    keep = valid.nonzero()[:, 0]
    ref = lit_centred_supervision(rendered[keep], targets[keep], selection[keep])
    torch.testing.assert_close(loss, ref)  # invalid rays neither count nor move the centre
    # Identical targets (nothing left after centring), zero vectors, no valid ray: finite, no NaN.
    same = targets[:1].expand(5, 2, 4).clone()
    zero = torch.zeros(5, 4, dtype=f64, requires_grad=True)
    for features, case_targets, case_valid in (
        (rendered, same, None),
        (zero, targets, None),
        (rendered, torch.zeros_like(targets), None),
        (rendered, targets, torch.zeros(5, dtype=torch.bool)),
    ):
        case = centred_clip_supervision_loss(features, case_targets, selection, case_valid)
        assert_finite(case, *grads(case, (features, selection)))
    assert centred_clip_supervision_loss(rendered, targets, selection, torch.zeros(5, dtype=torch.bool)).item() == 0.0


# ---- Eq. 4 ----


def test_segmentation_logits_matches_literal_and_zero_safe():
    torch.manual_seed(2)
    rendered = torch.randn(2, 3, 6, dtype=f64, requires_grad=True)
    text = torch.randn(4, 6, dtype=f64, requires_grad=True)
    ours = segmentation_logits(rendered, text)
    ref = torch.stack(
        [torch.stack([torch.stack([lit_cos(rendered[a, b], text[c]) for c in range(4)]) for b in range(3)]) for a in range(2)]
    )
    torch.testing.assert_close(ours, ref)
    weight = torch.randn_like(ref)
    for a, b in zip(grads((ours * weight).sum(), (rendered, text)), grads((ref * weight).sum(), (rendered, text))):
        torch.testing.assert_close(a, b)
    zero = torch.zeros(3, 6, requires_grad=True)
    logits = segmentation_logits(zero, torch.randn(4, 6))
    assert (logits == 0).all()
    assert_finite(*grads(logits.sum(), (zero,)))


def test_dot_product_logits_scale_with_the_feature_norm_and_keep_the_argmax():
    torch.manual_seed(5)
    rendered = torch.randn(3, 6, dtype=f64, requires_grad=True)
    text = torch.randn(4, 6, dtype=f64, requires_grad=True)
    ours = dot_product_logits(rendered, text)
    ref = torch.stack(
        [torch.stack([(rendered[r] * text[c]).sum() / torch.sqrt((text[c] * text[c]).sum()) for c in range(4)]) for r in range(3)]
    )
    torch.testing.assert_close(ours, ref)
    weight = torch.randn_like(ref)
    for a, b in zip(grads((ours * weight).sum(), (rendered, text)), grads((ref * weight).sum(), (rendered, text))):
        torch.testing.assert_close(a, b)
    norms = rendered.detach().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ours.detach(), norms * segmentation_logits(rendered, text).detach())
    assert torch.equal(ours.argmax(-1), segmentation_logits(rendered, text).argmax(-1))
    zero = torch.zeros(2, 6, dtype=f64)
    assert (dot_product_logits(zero, text.detach()) == 0).all()


# ---- JS core of Eqs. 8, 11 ----


def test_js_matches_literal():
    torch.manual_seed(3)
    p = torch.softmax(torch.randn(5, 7, dtype=f64), -1).requires_grad_()
    q = torch.softmax(torch.randn(5, 7, dtype=f64), -1).requires_grad_()
    ours = js_divergence(p, q)
    ref = torch.stack([lit_js(p[i], q[i]) for i in range(5)])
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours.sum(), (p, q)), grads(ref.sum(), (p, q))):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(js_divergence(p.T, q.T, dim=0), ours)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_js_degenerate_inputs_are_finite(dtype):
    c = 4
    one_hot = torch.eye(c, dtype=dtype)
    uniform = torch.full((c, c), 1 / c, dtype=dtype)
    near_zero = torch.tensor([1 - 3e-30, 1e-30, 1e-30, 1e-30], dtype=dtype).expand(c, c)
    cases = [
        (one_hot, one_hot),
        (one_hot, one_hot.roll(1, 0)),
        (one_hot, uniform),
        (uniform, uniform),
        (near_zero, one_hot),
        (near_zero, uniform),
    ]
    for p, q in cases:
        p, q = p.clone().requires_grad_(), q.clone().requires_grad_()
        value = js_divergence(p, q)
        assert_finite(value, *grads(value.sum(), (p, q)))
        assert (value >= -1e-6).all() and (value <= math.log(2) + 1e-6).all()
    torch.testing.assert_close(js_divergence(one_hot, one_hot), torch.zeros(c, dtype=dtype))
    torch.testing.assert_close(js_divergence(one_hot, one_hot.roll(1, 0)), torch.full((c,), math.log(2), dtype=dtype))


# ---- Eqs. 5-8 ----


def test_selected_relevancy_matches_literal():
    torch.manual_seed(4)
    rel = torch.rand(4, 3, 5, dtype=f64, requires_grad=True)
    sel = torch.softmax(torch.randn(4, 3, dtype=f64), -1).requires_grad_()
    ours = selected_relevancy(rel, sel)
    ref = torch.stack([sum(sel[r, s] * rel[r, s] for s in range(3)) for r in range(4)])
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours.sum(), (rel, sel)), grads(ref.sum(), (rel, sel))):
        torch.testing.assert_close(a, b)


def test_rda_matches_literal():
    torch.manual_seed(5)
    logits = (torch.rand(6, 5, dtype=f64) * 2 - 1).requires_grad_()
    rel_bar = torch.rand(6, 5, dtype=f64, requires_grad=True)
    ours = rda_loss(logits, rel_bar)
    ref = torch.stack([lit_js(lit_softmax(logits[r]), lit_softmax(rel_bar[r])) for r in range(6)]).mean()
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, (logits, rel_bar)), grads(ref, (logits, rel_bar))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_rda_extreme_logits_are_finite(dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    rel_bar = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    loss = rda_loss(logits, rel_bar)
    assert_finite(loss, *grads(loss, (logits, rel_bar)))



def test_sharpened_rda_target_matches_literal():
    torch.manual_seed(6)
    logits = (torch.rand(5, 4, dtype=f64) * 2 - 1).requires_grad_()
    rel_bar = torch.rand(5, 4, dtype=f64, requires_grad=True)
    tau = 0.2
    ours = rda_loss(logits, rel_bar, sharpening=tau)
    ref = torch.stack(
        [lit_js(lit_softmax(logits[r]), lit_softmax((2 * rel_bar[r] - 1) / tau)) for r in range(5)]
    ).mean()
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, (logits, rel_bar)), grads(ref, (logits, rel_bar))):
        torch.testing.assert_close(a, b)
    # Sharpening makes the target prefer the most relevant class far more than e-fold.
    target = torch.softmax((2 * torch.tensor([1.0, 0.8]) - 1) / tau, dim=-1)
    assert target[0] / target[1] > math.e**1.9


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_sharpened_rda_extreme_inputs_are_finite(dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    rel_bar = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    loss = rda_loss(logits, rel_bar, sharpening=1e-3)
    assert_finite(loss, *grads(loss, (logits, rel_bar)))


def test_selection_loss_matches_literal_kl_and_is_zero_at_the_target():
    torch.manual_seed(7)
    selection = torch.softmax(torch.randn(6, 3, dtype=f64), dim=-1).requires_grad_()
    target = torch.softmax(torch.randn(6, 3, dtype=f64), dim=-1)
    ours = selection_loss(selection, target)
    ref = torch.stack(
        [sum(target[r, s] * (torch.log(target[r, s]) - torch.log(selection[r, s])) for s in range(3)) for r in range(6)]
    ).mean()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads(ours, (selection,))[0], grads(ref, (selection,))[0])
    assert float(selection_loss(target, target)) == pytest.approx(0.0, abs=1e-12)


def test_selection_loss_one_hot_and_saturated_inputs_are_finite():
    selection = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss = selection_loss(selection, target)
    assert_finite(loss, *grads(loss, (selection,)))


# ---- Eqs. 9-14 ----


def test_dino_correlation_matches_literal():
    tokens = clustered_tokens(2, 5, 6)
    torch.testing.assert_close(dino_correlation(tokens), lit_correlation(tokens))


@pytest.mark.parametrize("fda", [fda_loss_dense, fda_loss])
def test_fda_matches_literal(fda):
    torch.manual_seed(6)
    tokens = clustered_tokens(2, 9, 6)
    logits = (torch.rand(2, 9, 4, dtype=f64) * 2 - 1).requires_grad_()
    kwargs = dict(tau=0.2, shift=0.7, lambda_pos=200.0, lambda_neg=0.2)
    ours = fda(logits, tokens, **kwargs)
    ref = lit_fda(logits, tokens, **kwargs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grads(ours[0] + 3 * ours[1], logits)[0], grads(ref[0] + 3 * ref[1], logits)[0])


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 13, 25, 64])
def test_fda_chunked_equals_dense(chunk_size):
    torch.manual_seed(7)
    tokens = clustered_tokens(3, 25, 16)
    logits = (torch.rand(3, 25, 6, dtype=f64) * 2 - 1).requires_grad_()
    dense = fda_loss_dense(logits, tokens)
    chunked = fda_loss(logits, tokens, chunk_size=chunk_size)
    assert dense[0] > 0 and dense[1] < 0  # both halves exercised
    for a, b in zip(chunked, dense):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for w_pos, w_neg in [(1.0, 0.0), (0.0, 1.0), (0.7, -2.0)]:
        torch.testing.assert_close(
            grads(w_pos * chunked[0] + w_neg * chunked[1], logits)[0],
            grads(w_pos * dense[0] + w_neg * dense[1], logits)[0],
            rtol=1e-10,
            atol=1e-14,
        )


def test_fda_chunked_equals_dense_float32():
    torch.manual_seed(8)
    tokens = clustered_tokens(4, 64, 32, dtype=torch.float32)
    logits = (torch.rand(4, 64, 7) * 2 - 1).requires_grad_()
    dense = fda_loss_dense(logits, tokens)
    chunked = fda_loss(logits, tokens, chunk_size=10)
    for a, b in zip(chunked, dense):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads(sum(chunked), logits)[0], grads(sum(dense), logits)[0], rtol=1e-4, atol=1e-7)


def test_fda_gradcheck():
    torch.manual_seed(9)
    tokens = clustered_tokens(2, 6, 4)
    logits = (torch.rand(2, 6, 3, dtype=f64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: fda_loss(z, tokens, shift=0.3, chunk_size=4), (logits,))


@pytest.mark.parametrize("side", ["all_positive", "all_negative"])
def test_fda_one_count_zero_stays_finite(side):
    torch.manual_seed(10)
    if side == "all_positive":  # identical tokens: Corr_F = 1 > shift everywhere, neg_F == 0
        tokens = torch.randn(2, 1, 8, dtype=f64).expand(2, 10, 8)
        shift = 0.7
    else:  # shift above any cosine: pos_F == 0
        tokens = torch.randn(2, 10, 8, dtype=f64)
        shift = 1.5
    logits = (torch.rand(2, 10, 5, dtype=f64) * 2 - 1).requires_grad_()
    for fda in (fda_loss_dense, lambda *a, **k: fda_loss(*a, **k, chunk_size=3)):
        pos, neg = fda(logits, tokens, shift=shift)
        assert_finite(pos, neg, *grads(pos + neg, logits))
        empty = neg if side == "all_positive" else pos
        assert empty.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_fda_extreme_logits_are_finite(dtype):
    torch.manual_seed(11)
    tokens = clustered_tokens(2, 12, 8, dtype=dtype)
    logits = (torch.randint(-1, 2, (2, 12, 4)).to(dtype) * 1e4).requires_grad_()
    dense = fda_loss_dense(logits, tokens)
    chunked = fda_loss(logits, tokens, chunk_size=5)
    g_dense, g_chunked = grads(sum(dense), logits)[0], grads(sum(chunked), logits)[0]
    assert_finite(*dense, *chunked, g_dense, g_chunked)
    for a, b in zip(chunked, dense):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_chunked, g_dense)


def test_fda_without_rebalancing_is_the_correlation_loss():
    """Eq. 14 with lambda_pos = lambda_neg is Eq. 12 once the per-count division is undone."""
    torch.manual_seed(12)
    tokens = clustered_tokens(2, 11, 8)
    logits = (torch.rand(2, 11, 4, dtype=f64) * 2 - 1).requires_grad_()
    shift = 0.7
    corr_f = lit_correlation(tokens)
    l_corr = ((corr_f - shift) * lit_corr_d(logits, 0.2)).sum()  # Eq. 12
    n_pos, n_neg = int((corr_f > shift).sum()), int((corr_f < shift).sum())
    for fda in (fda_loss_dense, fda_loss):
        pos, neg = fda(logits, tokens, shift=shift, lambda_pos=1.0, lambda_neg=1.0)
        undone = pos * n_pos + neg * n_neg
        torch.testing.assert_close(undone, l_corr)
        torch.testing.assert_close(grads(undone, logits)[0], grads(l_corr, logits)[0])


def test_fda_gives_no_gradient_to_the_teacher():
    tokens = clustered_tokens(1, 6, 4).requires_grad_()
    logits = torch.rand(1, 6, 3, dtype=f64, requires_grad=True)
    pos, neg = fda_loss(logits, tokens)
    (pos + neg).backward()
    assert tokens.grad is None and logits.grad is not None


# ---- the official code's variants ----


def lit_official_fda(logits, tokens, tau, shift, lambda_pos, lambda_neg):
    """The official CorrelationLoss: js_correlation(a, a) builds M from position j, i.e. KL(P'_hw || P'_ij)."""
    patches, n, classes = logits.shape
    corr_f = lit_correlation(tokens)
    sharp = [[lit_softmax(logits[p, i] / tau) for i in range(n)] for p in range(patches)]
    kl = torch.stack(
        [
            torch.stack(
                [
                    torch.stack([sum(sharp[p][i][c] * torch.log(sharp[p][i][c] / sharp[p][j][c]) for c in range(classes)) for j in range(n)])
                    for i in range(n)
                ]
            )
            for p in range(patches)
        ]
    )
    pos_f = torch.where(corr_f - shift > 0, corr_f - shift, torch.zeros_like(corr_f))
    neg_f = torch.where(corr_f - shift < 0, corr_f - shift, torch.zeros_like(corr_f))
    pos = lambda_pos * (pos_f * kl).sum() / int((pos_f != 0).sum())
    neg = lambda_neg * (neg_f * kl).sum() / int((neg_f != 0).sum())
    return pos, neg


def test_kl_fda_matches_the_official_transcription():
    torch.manual_seed(13)
    tokens = clustered_tokens(2, 7, 6)
    logits = (torch.rand(2, 7, 4, dtype=f64) * 2 - 1).requires_grad_()
    kwargs = dict(tau=0.2, shift=0.7, lambda_pos=200.0, lambda_neg=0.2)
    ours = fda_loss_kl(logits, tokens, **kwargs)
    ref = lit_official_fda(logits, tokens, **kwargs)
    assert ours[0] > 0 and ours[1] < 0
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grads(ours[0] + 3 * ours[1], logits)[0], grads(ref[0] + 3 * ref[1], logits)[0])


def test_kl_correlation_is_zero_on_the_diagonal_and_asymmetric():
    torch.manual_seed(14)
    log_p = torch.log_softmax(torch.randn(1, 5, 3, dtype=f64), dim=-1)
    kl = kl_correlation(log_p)[0]
    torch.testing.assert_close(kl.diagonal(), torch.zeros(5, dtype=f64))
    assert (kl >= -1e-12).all() and not torch.allclose(kl, kl.T)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_kl_fda_extreme_logits_are_finite(dtype):
    torch.manual_seed(15)
    tokens = clustered_tokens(2, 12, 8, dtype=dtype)
    logits = (torch.randint(-1, 2, (2, 12, 4)).to(dtype) * 1e4).requires_grad_()
    pos, neg = fda_loss_kl(logits, tokens)
    assert_finite(pos, neg, *grads(pos + neg, logits))
    tokens.requires_grad_()
    fresh = logits.detach().requires_grad_()
    pos, neg = fda_loss_kl(fresh, tokens)
    (pos + neg).backward()
    assert tokens.grad is None


def test_selected_targets_mix_raw_or_unit_scales():
    torch.manual_seed(16)
    targets = torch.randn(4, 3, 5, dtype=f64)
    selection = torch.softmax(torch.randn(4, 3, dtype=f64), dim=-1)
    raw = torch.stack([sum(selection[r, s] * targets[r, s] for s in range(3)) for r in range(4)])
    unit = torch.stack([sum(selection[r, s] * targets[r, s] / targets[r, s].norm() for s in range(3)) for r in range(4)])
    torch.testing.assert_close(selected_targets(targets, selection), raw)
    torch.testing.assert_close(selected_targets(targets, selection, normalize_scales=True), unit)
    zero = selected_targets(torch.zeros(2, 3, 5), torch.full((2, 3), 1 / 3), normalize_scales=True)
    assert torch.equal(zero, torch.zeros(2, 5))
    rendered = torch.randn(4, 5, dtype=f64)
    expected = torch.stack([-lit_cos(rendered[r], unit[r]) for r in range(4)]).mean()
    torch.testing.assert_close(clip_supervision_loss(rendered, targets, selection, normalize_scales=True), expected)
