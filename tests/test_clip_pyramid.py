"""Alg. 1 window store: geometry, equality with the literal algorithm, batching, per-ray gather."""

from __future__ import annotations

import math
from typing import List, Sequence

import pytest
import torch

from ovs3d_nerfstudio.features.clip_pyramid import (
    ClipFeatureStore,
    PixelClipPyramid,
    PyramidConfig,
    count_windows,
    extract_pyramid,
    extract_pyramid_sequential,
    patch_geometry,
    window_boxes,
)
from ovs3d_nerfstudio.errors import ConfigError
from ovs3d_nerfstudio.teachers.base import ClipTeacher


class LinearTeacher:
    """Deterministic stand-in for CLIP: a fixed random projection of a crop's mean colour and size.

    With ``quantize`` the embeddings are multiples of 1/64 below 32 in magnitude, exact in
    float16 and summed exactly in float32, so stored and reference features must agree bit
    for bit. Each crop is embedded on its own, so batching cannot change a value.
    """

    identity = "test:linear"

    def __init__(self, embed_dim: int = 8, quantize: bool = False, seed: int = 0) -> None:
        self.embed_dim = embed_dim
        self.quantize = quantize
        self.projection = torch.randn(5, embed_dim, generator=torch.Generator().manual_seed(seed))
        self.batch_sizes: List[int] = []

    def encode_crops(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        self.batch_sizes.append(len(crops))
        return torch.stack([self._embed(crop) for crop in crops])

    def _embed(self, crop: torch.Tensor) -> torch.Tensor:
        height, width = crop.shape[1:]
        descriptor = torch.cat([crop.mean(dim=(1, 2)), torch.tensor([height / 16.0, width / 16.0])])
        embedding = descriptor @ self.projection
        return torch.round(embedding * 64) / 64 if self.quantize else embedding

    def encode_text(self, texts: List[str]) -> torch.Tensor:
        return torch.zeros(len(texts), self.embed_dim)


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def expected_starts(length: int, patch_size: int, stride: int) -> List[int]:
    starts = list(range(0, length - patch_size + 1, stride))
    if starts[-1] + patch_size < length:
        starts.append(length - patch_size)
    return starts


def test_teacher_implements_protocol() -> None:
    assert isinstance(LinearTeacher(), ClipTeacher)


@pytest.mark.parametrize(
    "height, width, fraction, expected",
    [(378, 504, 1 / 5, (76, 19)), (378, 504, 1 / 7, (54, 13)), (378, 504, 1 / 10, (38, 9)),
     (5, 7, 1 / 10, (1, 1)), (9, 30, 1 / 2, (4, 1)), (1, 1, 1 / 5, (1, 1))],
)
def test_patch_geometry(height: int, width: int, fraction: float, expected: tuple) -> None:
    assert patch_geometry(height, width, fraction) == expected


@pytest.mark.parametrize("height, width", [(378, 504), (37, 53), (53, 37), (5, 7), (1, 1), (3, 11)])
@pytest.mark.parametrize("fraction", [1 / 5, 1 / 7, 1 / 10, 1.0])
def test_window_grid_covers_image_with_bounded_jitter(height: int, width: int, fraction: float) -> None:
    patch_size, stride = patch_geometry(height, width, fraction)
    boxes = window_boxes(height, width, patch_size, stride, torch.Generator().manual_seed(3))
    starts_y = expected_starts(height, patch_size, stride)
    starts_x = expected_starts(width, patch_size, stride)
    assert boxes.shape == (len(starts_y), len(starts_x), 4)
    assert boxes.dtype == torch.int32

    x0, y0, x1, y1 = boxes.long().unbind(-1)
    sy = torch.tensor(starts_y)[:, None]
    sx = torch.tensor(starts_x)[None, :]
    # Each side moves out by 0..stride from the regular window, then is clipped to the image.
    assert torch.all((x0 <= sx) & (x0 >= (sx - stride).clamp(min=0)))
    assert torch.all((y0 <= sy) & (y0 >= (sy - stride).clamp(min=0)))
    assert torch.all((x1 >= sx + patch_size) & (x1 <= (sx + patch_size + stride).clamp(max=width)))
    assert torch.all((y1 >= sy + patch_size) & (y1 <= (sy + patch_size + stride).clamp(max=height)))

    count = torch.zeros(height, width)
    for left, upper, right, lower in boxes.reshape(-1, 4).tolist():
        count[upper:lower, left:right] += 1
    assert count.min() >= 1


def test_jitter_spans_zero_to_stride_inclusive() -> None:
    patch_size, stride = patch_geometry(378, 504, 1 / 10)
    boxes = window_boxes(378, 504, patch_size, stride, torch.Generator().manual_seed(0))
    starts_x = torch.tensor(expected_starts(504, patch_size, stride))
    interior = (starts_x >= stride) & (starts_x + patch_size + stride <= 504)
    left_jitter = (starts_x[None, :] - boxes[..., 0])[:, interior]
    assert set(left_jitter.unique().tolist()) == set(range(stride + 1))


def test_default_pyramid_window_count_at_504x378() -> None:
    config = PyramidConfig()
    counts = []
    for fraction in config.patch_fractions:
        patch_size, stride = patch_geometry(378, 504, fraction)
        counts.append(len(expected_starts(378, patch_size, stride)) * len(expected_starts(504, patch_size, stride)))
    assert counts == [17 * 24, 26 * 36, 39 * 53]
    assert sum(counts) == 3411


@pytest.mark.parametrize("height, width", [(23, 31), (31, 23), (6, 5)])
def test_window_store_equals_literal_alg1_exactly(height: int, width: int) -> None:
    image = random_image(height, width)
    teacher = LinearTeacher(quantize=True)
    config = PyramidConfig(seed=5)
    pyramid = extract_pyramid(image, teacher, config, batch_size=16)
    reference = extract_pyramid_sequential(image, teacher, config)
    assert reference.shape == (3, teacher.embed_dim, height, width)
    for scale in range(3):
        dense = pyramid.dense(scale)
        assert dense.dtype == torch.float32
        assert torch.equal(dense.permute(2, 0, 1), reference[scale])


def test_window_store_matches_alg1_within_fp16_rounding() -> None:
    image = random_image(29, 40, seed=1)
    teacher = LinearTeacher(embed_dim=16)
    config = PyramidConfig(seed=1)
    pyramid = extract_pyramid(image, teacher, config, batch_size=32)
    assert all(e.dtype == torch.float16 for e in pyramid.embeddings)
    reference = extract_pyramid_sequential(image, teacher, config)
    for scale in range(3):
        error = (pyramid.dense(scale).permute(2, 0, 1) - reference[scale]).abs().max().item()
        assert error < 2e-3 * reference[scale].abs().max().item()


@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
def test_batched_extraction_call_count(batch_size: int) -> None:
    teacher = LinearTeacher()
    pyramid = extract_pyramid(random_image(20, 26), teacher, PyramidConfig(), batch_size=batch_size)
    num_windows = sum(b.shape[0] * b.shape[1] for b in pyramid.boxes)
    assert sum(teacher.batch_sizes) == num_windows
    assert len(teacher.batch_sizes) == math.ceil(num_windows / batch_size)
    assert max(teacher.batch_sizes) == min(batch_size, num_windows)


def test_batch_callback_sees_every_batch_and_the_window_count_is_exact() -> None:
    seen: List[int] = []
    teacher = LinearTeacher()
    pyramid = extract_pyramid(random_image(12, 17), teacher, PyramidConfig(), batch_size=10, on_batch=seen.append)
    assert seen == teacher.batch_sizes
    assert sum(seen) == sum(b.shape[0] * b.shape[1] for b in pyramid.boxes) == count_windows(12, 17, PyramidConfig())


def test_window_count_by_hand() -> None:
    # 80x60, s/5: p = 12, stride 3; rows (60-12)//3+1 = 17 reach the edge exactly; columns
    # (80-12)//3+1 = 23 end at 78, so one more flush with the edge: 17 x 24.
    assert count_windows(60, 80, PyramidConfig(patch_fractions=(0.2,))) == 17 * 24
    # A window as large as the image: one window.
    assert count_windows(5, 5, PyramidConfig(patch_fractions=(1.0,))) == 1


def test_seed_determinism() -> None:
    image = random_image(30, 30)
    first = extract_pyramid(image, LinearTeacher(), PyramidConfig(seed=4))
    again = extract_pyramid(image, LinearTeacher(), PyramidConfig(seed=4))
    other = extract_pyramid(image, LinearTeacher(), PyramidConfig(seed=5))
    for scale in range(3):
        assert torch.equal(first.boxes[scale], again.boxes[scale])
        assert torch.equal(first.embeddings[scale], again.embeddings[scale])
    assert any(not torch.equal(first.boxes[s], other.boxes[s]) for s in range(3))


def test_pyramid_tensor_round_trip() -> None:
    pyramid = extract_pyramid(random_image(17, 22), LinearTeacher(), PyramidConfig(patch_fractions=(1 / 7,)))
    restored = PixelClipPyramid.from_tensors(pyramid.to_tensors())
    assert (restored.height, restored.width) == (17, 22)
    assert restored.patch_sizes == pyramid.patch_sizes and restored.strides == pyramid.strides
    assert torch.equal(restored.boxes[0], pyramid.boxes[0])
    assert torch.equal(restored.embeddings[0], pyramid.embeddings[0])


def test_config_rejects_bad_fractions() -> None:
    with pytest.raises(ConfigError, match="--pipeline.datamanager.pyramid.patch-fractions needs"):
        PyramidConfig(patch_fractions=())
    with pytest.raises(ConfigError, match=r"patch-fractions: 1.5 is outside \(0, 1\]"):
        PyramidConfig(patch_fractions=(1.5,))


def border_and_random_pixels(num_views: int, height: int, width: int, count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ys = [0, 0, height - 1, height - 1] + list(range(height)) + [0] * width + [height - 1] * width
    xs = [0, width - 1, 0, width - 1] + [0] * height + list(range(width)) + list(range(width))
    y = torch.cat([torch.tensor(ys), torch.randint(0, height, (count,), generator=generator)])
    x = torch.cat([torch.tensor(xs), torch.randint(0, width, (count,), generator=generator)])
    view = torch.randint(0, num_views, (len(y),), generator=generator)
    return view, y, x


@pytest.mark.parametrize("height, width", [(29, 41), (41, 29), (4, 6), (1, 1), (2, 9), (16, 16)])
def test_gather_equals_dense_indexing(height: int, width: int) -> None:
    teacher = LinearTeacher(quantize=True)
    config = PyramidConfig(seed=2)
    pyramids = [extract_pyramid(random_image(height, width, seed=v), teacher, config) for v in range(3)]
    store = ClipFeatureStore.from_pyramids(pyramids)
    assert (store.num_views, store.num_scales, store.embed_dim) == (3, 3, teacher.embed_dim)
    view, y, x = border_and_random_pixels(3, height, width, count=300)
    features = store.gather(view, y, x, chunk_size=37)
    assert features.shape == (len(view), 3, teacher.embed_dim) and features.dtype == torch.float32
    for scale in range(3):
        dense = torch.stack([store.dense(v, scale) for v in range(3)])
        assert torch.equal(dense, torch.stack([p.dense(scale) for p in pyramids]))
        assert torch.equal(features[:, scale], dense[view, y, x])


def test_gather_at_full_feature_resolution() -> None:
    """Real 504x378 geometry (p = 76/54/38) with synthetic embeddings, no encoder needed."""
    height, width, num_views, dim = 378, 504, 2, 4
    generator = torch.Generator().manual_seed(0)
    patch_sizes, strides, boxes, embeddings = [], [], [], []
    for fraction in PyramidConfig().patch_fractions:
        patch_size, stride = patch_geometry(height, width, fraction)
        per_view = torch.stack([window_boxes(height, width, patch_size, stride, generator) for _ in range(num_views)])
        patch_sizes.append(patch_size)
        strides.append(stride)
        boxes.append(per_view)
        embeddings.append(torch.randn(*per_view.shape[:3], dim, generator=generator).half())
    store = ClipFeatureStore(height, width, patch_sizes, strides, boxes, embeddings)
    view, y, x = border_and_random_pixels(num_views, height, width, count=2000, seed=1)
    features = store.gather(view, y, x, chunk_size=512)
    for scale in range(3):
        dense = torch.stack([store.dense(v, scale) for v in range(num_views)])
        torch.testing.assert_close(features[:, scale], dense[view, y, x], rtol=1e-5, atol=1e-5)
    assert store.nbytes() == sum(b.nbytes for b in boxes) + sum(e.nbytes + dim * 2 for e in embeddings)


def test_store_rejects_mismatched_views() -> None:
    teacher = LinearTeacher()
    small = extract_pyramid(random_image(10, 12), teacher, PyramidConfig())
    large = extract_pyramid(random_image(12, 12), teacher, PyramidConfig())
    with pytest.raises(ValueError, match="same size"):
        ClipFeatureStore.from_pyramids([small, large])
