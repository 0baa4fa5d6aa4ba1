"""ESS: the adapter's official form against a direct transcription (values, gradients,
degenerate inputs), its loss, and that training at the paper's settings fits pseudo labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovs3d_nerfstudio.data.labels import IGNORE
from ovs3d_nerfstudio.vlg.ess import (
    Adapter,
    EssConfig,
    EssScene,
    adapter_forward,
    adapter_logits,
    balancing_weights,
    epoch_batches,
    ess_loss,
    train_adapter,
)


def _transcription(x, w1, w2, b2):
    """0.95 * W2(W1 x) + 0.05 * x, one point and one output at a time."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        hidden = [sum(w1[h, d] * x[n, d] for d in range(x.shape[1])) for h in range(w1.shape[0])]
        for d in range(x.shape[1]):
            out[n, d] = 0.95 * (sum(w2[d, h] * hidden[h] for h in range(w1.shape[0])) + b2[d]) + 0.05 * x[n, d]
    return out


def test_adapter_matches_the_transcription_in_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(8, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(8, generator=generator, dtype=torch.float64, requires_grad=True)
    ours, reference = adapter_forward(x, w1, w2, b2), _transcription(x, w1, w2, b2)
    torch.testing.assert_close(ours, reference)
    weights = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((ours * weights).sum(), (x, w1, w2, b2))
    expected = torch.autograd.grad((reference * weights).sum(), (x, w1, w2, b2))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(adapter_forward, (x, w1, w2, b2))


def test_adapter_module_form():
    text = torch.randn(5, 16)
    adapter = Adapter(text)
    assert adapter.w1.weight.shape == (4, 16) and adapter.w1.bias is None
    assert adapter.w2.weight.shape == (16, 4) and adapter.w2.bias.shape == (16,)
    assert sum(p.numel() for p in adapter.parameters()) == 16 * 4 + 4 * 16 + 16
    assert not any(p is adapter.text for p in adapter.parameters())  # the text features stay frozen
    torch.testing.assert_close(adapter.text.norm(dim=1), torch.ones(5))
    x = torch.randn(7, 16)
    torch.testing.assert_close(adapter(x), 0.95 * adapter.w2(adapter.w1(x)) + 0.05 * x)
    torch.testing.assert_close(adapter.logits(x), adapter_logits(adapter(x), F.normalize(text, dim=1)))
    # Degenerate inputs: zeros (uncovered points) and huge values stay finite.
    for degenerate in (torch.zeros(2, 16), torch.full((2, 16), 1e6)):
        assert torch.isfinite(adapter.logits(degenerate)).all()
    with pytest.raises(ValueError, match="at least 4"):
        Adapter(torch.randn(3, 2))


def test_ess_loss_ignores_unlabelled_points():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], requires_grad=True)
    pseudo = torch.tensor([0, IGNORE, 1])
    expected = (-F.log_softmax(logits[[0, 2]], dim=1)[[0, 1], [0, 1]]).mean()
    torch.testing.assert_close(ess_loss(logits, pseudo), expected)
    empty = ess_loss(logits, torch.full((3,), IGNORE))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(logits.grad).all()


def test_balancing_weights_follow_the_inverse_frequency():
    pseudo = torch.tensor([0] * 6 + [1] * 2 + [3] * 1 + [IGNORE] * 5)
    counts = {0: 6.0, 1: 2.0, 3: 1.0}
    for power in (0.5, 1.0):
        raw = {c: (9.0 / n) ** power for c, n in counts.items()}
        mean = sum(raw.values()) / 3
        expected = torch.tensor([raw[0] / mean, raw[1] / mean, 0.0, raw[3] / mean])
        torch.testing.assert_close(balancing_weights(pseudo, 4, power), expected)
    torch.testing.assert_close(balancing_weights(pseudo, 4, 0.0), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    # Power 1: every present class carries the same total weight.
    weights = balancing_weights(pseudo, 4, 1.0)
    totals = [weights[c] * n for c, n in counts.items()]
    torch.testing.assert_close(torch.stack(totals), totals[0].expand(3))
    # Degenerate: one class only, and no labelled point at all.
    torch.testing.assert_close(balancing_weights(torch.tensor([2, 2]), 3, 1.0), torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="all unlabelled"):
        balancing_weights(torch.full((4,), IGNORE), 3, 1.0)


def test_weighted_ess_loss_is_the_weighted_mean():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0], [1.0, 1.0]], requires_grad=True)
    pseudo = torch.tensor([0, IGNORE, 1, 1])
    weights = torch.tensor([0.5, 2.0])
    nll = -F.log_softmax(logits[[0, 2, 3]], dim=1)[[0, 1, 2], [0, 1, 1]]
    expected = (nll * torch.tensor([0.5, 2.0, 2.0])).sum() / 4.5
    torch.testing.assert_close(ess_loss(logits, pseudo, weights), expected)
    grad, = torch.autograd.grad(ess_loss(logits, pseudo, weights), logits)
    want, = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, want)
    # Degenerate: every labelled point of the batch weighs 0 gives 0 with a finite gradient, not NaN.
    nothing = ess_loss(logits, pseudo, torch.tensor([0.0, 0.0]))
    assert nothing.item() == 0.0
    grad, = torch.autograd.grad(nothing, logits)
    assert torch.isfinite(grad).all()


def test_ess_config_check_names_the_bad_setting():
    EssConfig().check()
    for settings, message in (
        ({"class_balance": -0.5}, "class-balance must be >= 0"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batches_per_epoch": 0}, "batches-per-epoch must be >= 1"),
        ({"points_per_scene": 0}, "points-per-scene must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            EssConfig(**settings).check()
        scene = EssScene(torch.randn(4, 8), torch.tensor([0, 1, 0, 1]))
        with pytest.raises(ValueError, match=message):
            train_adapter([scene], torch.randn(2, 8), EssConfig(**settings))


def test_class_balance_recovers_a_rare_class_the_plain_loss_gives_up():
    """A rare class whose features overlap a frequent one: the unweighted loss labels it as the
    frequent class, the balanced loss gives it its points back."""
    generator = torch.Generator().manual_seed(3)
    dim = 16
    text = torch.eye(3, dim)
    labels = torch.cat([torch.zeros(950, dtype=torch.long), torch.full((50,), 1), torch.full((300,), 2)])
    fused = text[labels] * torch.tensor([1.0, 0.4, 1.0])[labels, None] + 0.5 * torch.randn(len(labels), dim, generator=generator)
    fused[labels == 1, 0] += 0.6
    scenes = [EssScene.covered(fused, labels, torch.ones(len(labels), dtype=torch.int32))]
    recall = {}
    for balance in (0.0, 1.0):
        adapter, _ = train_adapter(scenes, text, EssConfig(epochs=40, class_balance=balance))
        with torch.no_grad():
            recall[balance] = (adapter.logits(fused).argmax(dim=1) == 1)[labels == 1].float().mean().item()
    assert recall[1.0] > recall[0.0] + 0.2


def test_training_fits_pseudo_labels_and_keeps_the_last_epoch():
    """Features with a large shared component (like CLIP's) and the class signal along the text
    features: the adapter learns to separate them at the paper's settings."""
    generator = torch.Generator().manual_seed(1)
    dim, classes = 32, 4
    text = torch.randn(classes, dim, generator=generator)
    common = torch.randn(dim, generator=generator)
    scenes = []
    for _ in range(3):
        labels = torch.randint(classes, (500,), generator=generator)
        fused = 3 * common + 0.3 * text[labels] + 0.3 * torch.randn(500, dim, generator=generator)
        pseudo = torch.where(torch.rand(500, generator=generator) < 0.1, IGNORE, labels)
        coverage = torch.ones(500, dtype=torch.int32)
        coverage[:20] = 0
        scenes.append(EssScene.covered(fused, pseudo, coverage))
    assert len(scenes[0].pseudo) == 480
    epochs = []
    adapter, history = train_adapter(scenes, text, EssConfig(), on_epoch=lambda epoch, loss: epochs.append(epoch))
    assert len(history) == 80 and epochs == list(range(80))
    assert history[-1] < 0.5 * history[0]
    fused = torch.cat([s.fused for s in scenes])
    pseudo = torch.cat([s.pseudo for s in scenes])
    labelled = pseudo != IGNORE
    with torch.no_grad():
        accuracy = (adapter.logits(fused).argmax(dim=1) == pseudo)[labelled].float().mean()
    assert accuracy > 0.95
    # The same seed gives the same adapter.
    again, _ = train_adapter(scenes, text, EssConfig(epochs=2))
    twice, _ = train_adapter(scenes, text, EssConfig(epochs=2))
    torch.testing.assert_close(again.w1.weight, twice.w1.weight)


def test_epoch_batches():
    generator = torch.Generator().manual_seed(0)
    paper = epoch_batches(20, 16, None, generator)
    assert [len(b) for b in paper] == [16, 4] and sorted(sum(paper, [])) == list(range(20))
    more = epoch_batches(3, 16, 5, generator)
    assert len(more) == 5 and all(sorted(b) == [0, 1, 2] for b in more)  # distinct scenes per batch
    assert all(len(set(b)) == 4 for b in epoch_batches(10, 4, 7, generator))
    with pytest.raises(ValueError, match="batches per epoch"):
        epoch_batches(3, 16, 0, generator)
