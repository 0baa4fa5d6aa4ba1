"""ESGS: the cosine loss (per point and its exact per-voxel form), the poly schedule, the
augmentations, one tiny overfitting run, and prediction with test-time augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovs3d_nerfstudio.vlg.esgs import (
    EsgsConfig,
    EsgsScene,
    augmentation_matrix,
    cosine_distillation_loss,
    horizontal_axes,
    jitter_colours,
    poly_learning_rate,
    predict_embeddings,
    train_esgs,
    voxel_class_loss,
    voxel_cosine_loss,
)
from ovs3d_nerfstudio.vlg.minkunet import MinkUNetSpec

TINY_UNET = MinkUNetSpec(planes=(8, 8, 8, 8, 8, 8, 8, 8), blocks=(1,) * 8, stem_channels=8, stem_kernel=3)


def _transcription(predicted, target, covered):
    terms = []
    for p, t, c in zip(predicted, target, covered):
        if c:
            terms.append(1 - (p * t).sum() / (p.norm() * t.norm()))
    return sum(terms) / len(terms)


def test_cosine_loss_matches_the_transcription_and_handles_degenerate_inputs():
    generator = torch.Generator().manual_seed(0)
    predicted = torch.randn(6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    covered = torch.tensor([True, False, True, True, False, True])
    ours, reference = cosine_distillation_loss(predicted, target, covered), _transcription(predicted, target, covered)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, predicted)[0], torch.autograd.grad(reference, predicted)[0])
    zero = torch.zeros(2, 5, dtype=torch.float64, requires_grad=True)
    loss = cosine_distillation_loss(zero, target[:2], torch.tensor([True, True]))
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.isfinite(zero.grad).all()
    nothing = cosine_distillation_loss(predicted, target, torch.zeros(6, dtype=torch.bool))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_voxel_form_equals_the_per_point_loss():
    generator = torch.Generator().manual_seed(1)
    voxel_predicted = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    point_to_voxel = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1])
    targets = F.normalize(torch.randn(8, 5, generator=generator, dtype=torch.float64), dim=1)
    covered = torch.tensor([True, True, False, True, False, True, True, True])
    ours = voxel_cosine_loss(voxel_predicted, point_to_voxel, targets, covered)
    reference = cosine_distillation_loss(voxel_predicted[point_to_voxel], targets, covered)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(
        torch.autograd.grad(ours, voxel_predicted)[0], torch.autograd.grad(reference, voxel_predicted)[0]
    )
    assert voxel_cosine_loss(voxel_predicted, point_to_voxel, targets, torch.zeros(8, dtype=torch.bool)).item() == 0.0
    assert torch.isfinite(voxel_cosine_loss(torch.zeros(4, 5), point_to_voxel, targets.float(), covered))


def _class_transcription(voxel_predicted, text, point_to_voxel, probabilities, covered):
    terms = []
    for voxel, p, c in zip(point_to_voxel, probabilities, covered):
        if c:
            logits = torch.stack([(voxel_predicted[voxel] * t).sum() for t in text])
            log_q = logits - torch.log(torch.exp(logits - logits.max()).sum()) - logits.max()
            terms.append(-(p * log_q).sum())
    return sum(terms) / len(terms)


def test_class_term_matches_the_per_point_transcription_and_handles_degenerate_inputs():
    generator = torch.Generator().manual_seed(2)
    voxel_predicted = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    text = F.normalize(torch.randn(3, 5, generator=generator, dtype=torch.float64), dim=1)
    point_to_voxel = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1])
    probabilities = torch.softmax(torch.randn(8, 3, generator=generator, dtype=torch.float64), dim=1)
    covered = torch.tensor([True, True, False, True, False, True, True, True])
    ours = voxel_class_loss(voxel_predicted, text, point_to_voxel, probabilities, covered)
    reference = _class_transcription(voxel_predicted, text, point_to_voxel, probabilities, covered)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(
        torch.autograd.grad(ours, voxel_predicted)[0], torch.autograd.grad(reference, voxel_predicted)[0]
    )
    # Minimal (the targets' entropy) when the voxel's logits reproduce a point's distribution.
    one = F.normalize(torch.randn(1, 5, generator=generator, dtype=torch.float64), dim=1) * 3
    target = torch.softmax(one @ text.T, dim=1)
    exact = voxel_class_loss(one, text, torch.tensor([0]), target, torch.tensor([True]))
    torch.testing.assert_close(exact, -(target * target.log()).sum())
    nothing = voxel_class_loss(voxel_predicted, text, point_to_voxel, probabilities, torch.zeros(8, dtype=torch.bool))
    assert nothing.item() == 0.0 and nothing.requires_grad
    huge = torch.full((4, 5), 1e4, dtype=torch.float64, requires_grad=True)
    loss = voxel_class_loss(huge, text, point_to_voxel, probabilities, covered)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(huge.grad).all()


def test_class_term_needs_text_and_class_targets():
    xyz, colours, targets, _ = _blobs(0)
    scene = EsgsScene(xyz, colours, targets.half(), torch.ones(len(xyz), dtype=torch.bool), np.array([0.0, 1.0, 0.0]), 0.05)
    config = EsgsConfig(architecture=TINY_UNET, epochs=1, class_weight=1.0)
    with pytest.raises(ValueError, match="class term"):
        train_esgs([scene], 16, config, text=torch.eye(3, 16))
    with pytest.raises(ValueError, match="class term"):
        train_esgs([scene], 16, config)


def test_poly_schedule():
    assert poly_learning_rate(1e-3, 0, 100) == 1e-3
    assert poly_learning_rate(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5**0.9)
    assert poly_learning_rate(1e-3, 100, 100) == 0.0


def test_augmentations_keep_up_within_the_official_ranges():
    up = np.array([0.0, 0.6, 0.8])
    first, second = horizontal_axes(up)
    assert abs(first @ up) < 1e-12 and abs(second @ up) < 1e-12 and abs(first @ second) < 1e-12
    rng = np.random.default_rng(0)
    flips, angles = 0, []
    for _ in range(200):
        matrix = augmentation_matrix(up, rng)
        scale = np.cbrt(abs(np.linalg.det(matrix)))
        assert 0.9 <= scale <= 1.1
        np.testing.assert_allclose(matrix.T @ matrix, scale**2 * np.eye(3), atol=1e-9)
        tilt = math.acos(np.clip((matrix @ up) @ up / scale, -1, 1))
        assert tilt <= math.sqrt(2) * math.pi / 64 + 1e-9
        flips += np.linalg.det(matrix) < 0
        rotated = matrix @ first / scale
        angles.append(math.atan2(rotated @ second, rotated @ first))
    assert 60 < flips < 140
    assert max(angles) > 2.5 and min(angles) < -2.5  # rotations about up span ±π
    colours = np.full((1000, 3), 0.5)
    jittered = jitter_colours(colours, np.random.default_rng(1))
    assert 0.0 <= jittered.min() and jittered.max() <= 1.0
    assert abs((jittered - colours).mean(axis=0)).max() <= 0.1 + 0.01
    assert 0.03 < (jittered - jittered.mean(axis=0)).std() < 0.07


def _blobs(seed: int):
    """Three coloured blobs on a plane; each class has its own unit target."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = rng.integers(0, 3, 1500)
    xyz = centres[labels] + rng.normal(0, 0.15, (1500, 3)) * [1, 0.2, 1]
    colours = np.eye(3)[labels] * 0.8 + 0.1
    targets = F.normalize(torch.eye(3, 16)[torch.from_numpy(labels)] + 0.1, dim=1)
    return xyz, colours, targets, labels


def test_tiny_overfitting_run_converges():
    xyz, colours, targets, labels = _blobs(0)
    covered = torch.ones(len(xyz), dtype=torch.bool)
    covered[::10] = False
    scene = EsgsScene(xyz, colours, targets.half(), covered, np.array([0.0, 1.0, 0.0]), voxel_size=0.05)
    steps = []
    # 60 epochs leave it at the 0.95 edge (thread-count rounding decides); 100 converge.
    config = EsgsConfig(architecture=TINY_UNET, epochs=100, lr=1e-2, augment=False, class_weight=0.0)
    network, history = train_esgs([scene], 16, config, on_step=lambda step, total, loss: steps.append(total))
    assert len(history) == 100 and steps == [100] * 100
    assert history[0] > 0.5 and history[-1] < 0.2
    embeddings = predict_embeddings(network, xyz, colours, 0.05, scene.up)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(xyz)))
    predicted = (embeddings @ F.normalize(torch.eye(3, 16) + 0.1, dim=1).T).argmax(dim=1).numpy()
    assert (predicted == labels).mean() > 0.95  # including the points that had no target
    tta = predict_embeddings(network, xyz, colours, 0.05, scene.up, repeats=3)
    norms = tta.norm(dim=1)
    assert norms.max() <= 3.0 + 1e-4 and norms.median() > 2.5  # three unit embeddings that mostly agree
    assert ((tta @ F.normalize(torch.eye(3, 16) + 0.1, dim=1).T).argmax(dim=1).numpy() == labels).mean() > 0.9
    with pytest.raises(ValueError, match="repeats"):
        predict_embeddings(network, xyz, colours, 0.05, scene.up, repeats=0)


def test_class_term_run_learns_the_labels_the_cosine_misses():
    """Targets that share one large component and differ by a small class part: with a few
    steps the cosine alone barely separates the classes, the class term does."""
    xyz, colours, _, labels = _blobs(3)
    text = F.normalize(torch.eye(3, 16) + 0.1, dim=1)
    shared = torch.zeros(16)
    shared[10] = 1.0
    embedded = 8.0 * shared + 0.3 * text[torch.from_numpy(labels)]
    scene = EsgsScene(
        xyz,
        colours,
        F.normalize(embedded, dim=1).half(),
        torch.ones(len(xyz), dtype=torch.bool),
        np.array([0.0, 1.0, 0.0]),
        voxel_size=0.05,
        class_targets=torch.softmax(10.0 * embedded @ text.T, dim=1).half(),
    )
    accuracy = {}
    for weight in (0.0, 1.0):
        config = EsgsConfig(architecture=TINY_UNET, epochs=30, lr=1e-2, augment=False, class_weight=weight)
        network, _ = train_esgs([scene], 16, config, text=text)
        embeddings = predict_embeddings(network, xyz, colours, 0.05, scene.up)
        accuracy[weight] = ((embeddings @ text.T).argmax(dim=1).numpy() == labels).mean()
    assert accuracy[1.0] > 0.7 and accuracy[1.0] > accuracy[0.0] + 0.2, accuracy  # measured 0.82 vs 0.41


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_and_prediction_on_cuda_match_the_cpu():
    """The same tiny run on CUDA and on the CPU: the same early losses (up to the order of CUDA's
    atomic sums) and the same labels; the trained network comes back on the CPU."""
    xyz, colours, targets, labels = _blobs(0)
    text = F.normalize(torch.eye(3, 16) + 0.1, dim=1)
    scene = EsgsScene(
        xyz, colours, targets.half(), torch.ones(len(xyz), dtype=torch.bool), np.array([0.0, 1.0, 0.0]), 0.05,
        class_targets=torch.softmax(10.0 * targets @ text.T, dim=1).half(),
    )
    runs = {}
    for device in ("cpu", "cuda"):
        config = EsgsConfig(architecture=TINY_UNET, epochs=20, lr=1e-2, augment=True, device=device)
        network, history = train_esgs([scene], 16, config, text=text)
        assert next(network.parameters()).device.type == "cpu"
        runs[device] = (network, history)
    # Early steps agree closely; later ones may drift apart by rounding, so they are compared by labels.
    np.testing.assert_allclose(runs["cuda"][1][:5], runs["cpu"][1][:5], rtol=1e-3, atol=1e-4)
    cpu_labels = (predict_embeddings(runs["cpu"][0], xyz, colours, 0.05, scene.up) @ text.T).argmax(dim=1)
    on_cuda = runs["cuda"][0].cuda()
    cuda_embeddings = predict_embeddings(on_cuda, xyz, colours, 0.05, scene.up, repeats=2)
    assert cuda_embeddings.device.type == "cpu"
    assert ((cuda_embeddings @ text.T).argmax(dim=1) == cpu_labels).float().mean() > 0.9
