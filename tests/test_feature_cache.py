"""Feature cache: content keys, round trips, atomic writes, recovery from damaged entries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import pytest
import torch

from ovs3d_nerfstudio.features.cache import FeatureCache, default_cache_dir
from ovs3d_nerfstudio.features.clip_pyramid import PixelClipPyramid, PyramidConfig, extract_pyramid

SETTINGS = {"patch_fractions": [0.2, 1 / 7, 0.1], "seed": 0, "resolution": [24, 32]}


class MeanColourTeacher:
    identity = "test:mean-colour"
    embed_dim = 3

    def encode_crops(self, crops):
        return torch.stack([crop.mean(dim=(1, 2)) for crop in crops])

    def encode_text(self, texts):
        return torch.zeros(len(texts), 3)


def image_uint8(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def pyramid_tensors(seed: int = 0) -> Dict[str, torch.Tensor]:
    image = image_uint8(seed).float() / 255
    return extract_pyramid(image, MeanColourTeacher(), PyramidConfig()).to_tensors()


class CountingCompute:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Dict[str, torch.Tensor]:
        self.calls += 1
        return pyramid_tensors()


def assert_same(first: Dict[str, torch.Tensor], second: Dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].dtype == second[name].dtype and torch.equal(first[name], second[name])


def test_round_trip_keeps_values_and_float16(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(image_uint8(), "test:mean-colour", SETTINGS)
    assert cache.load(key) is None
    tensors = pyramid_tensors()
    cache.save(key, tensors)
    assert cache.path(key) == tmp_path / key[:2] / f"{key}.pt"
    loaded = cache.load(key)
    assert_same(loaded, tensors)
    assert all(loaded[f"embeddings_{s}"].dtype == torch.float16 for s in range(3))
    restored = PixelClipPyramid.from_tensors(loaded)
    assert restored.num_scales == 3 and restored.dense(0).shape == (24, 32, 3)


def test_save_stores_only_the_viewed_elements(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(image_uint8(), "x", {})
    big = torch.zeros(1000, 512, dtype=torch.float16)
    cache.save(key, {"row": big[3]})
    assert cache.path(key).stat().st_size < 100_000
    assert torch.equal(cache.load(key)["row"], big[3])


def test_key_depends_on_content_identity_and_settings_only(tmp_path: Path) -> None:
    image = image_uint8()
    key = FeatureCache(tmp_path / "scene_a").key(image, "clip:a", SETTINGS)
    assert len(key) == 64
    # The folder (scene name, cache location) does not enter the key; settings order does not either.
    assert FeatureCache(tmp_path / "renamed").key(image.clone(), "clip:a", dict(reversed(SETTINGS.items()))) == key
    changed = image.clone()
    changed[1, 5, 7] ^= 1
    assert FeatureCache.key(changed, "clip:a", SETTINGS) != key
    assert FeatureCache.key(image.float(), "clip:a", SETTINGS) != key
    assert FeatureCache.key(image.reshape(3, 32, 24), "clip:a", SETTINGS) != key
    assert FeatureCache.key(image, "clip:b", SETTINGS) != key
    assert FeatureCache.key(image, "clip:a", {**SETTINGS, "seed": 1}) != key


def test_get_or_compute_computes_once(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(image_uint8(), "test", SETTINGS)
    compute = CountingCompute()
    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert compute.calls == 1
    assert_same(first, second)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_key", "flipped_value"])
def test_damaged_entry_is_recomputed(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(image_uint8(), "test", SETTINGS)
    compute = CountingCompute()
    cache.get_or_compute(key, compute)
    path = cache.path(key)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 40)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong_key":
        other = cache.key(image_uint8(seed=1), "test", SETTINGS)
        cache.save(other, pyramid_tensors(seed=1))
        path.write_bytes(cache.path(other).read_bytes())
    else:
        payload = torch.load(path, weights_only=True)
        payload["tensors"]["embeddings_0"][0, 0, 0] += 1
        torch.save(payload, path)

    with caplog.at_level(logging.WARNING, logger="ovs3d_nerfstudio.features.cache"):
        result = cache.get_or_compute(key, compute)
    assert compute.calls == 2
    assert_same(result, pyramid_tensors())
    assert any(str(path) in record.getMessage() for record in caplog.records)
    assert_same(cache.load(key), pyramid_tensors())


def test_writes_leave_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path)
    keys = [cache.key(image_uint8(seed), "test", SETTINGS) for seed in range(3)]
    for key in keys:
        cache.save(key, pyramid_tensors())
    cache.save(keys[0], pyramid_tensors(seed=1))
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(cache.path(key) for key in keys)

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    new_key = cache.key(image_uint8(seed=9), "test", SETTINGS)
    with pytest.raises(OSError):
        cache.save(new_key, pyramid_tensors())
    # A failed write neither leaves a temporary file nor replaces an existing entry.
    with pytest.raises(OSError):
        cache.save(keys[0], pyramid_tensors())
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert_same(cache.load(keys[0]), pyramid_tensors(seed=1))
    # get_or_compute survives an unwritable cache and still returns the features.
    compute = CountingCompute()
    assert_same(cache.get_or_compute(new_key, compute), pyramid_tensors())
    assert compute.calls == 1


def test_rejects_keys_that_are_not_hashes(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    for bad in ["../escape", "ab", "A" * 64]:
        with pytest.raises(ValueError):
            cache.load(bad)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ovs3d_nerfstudio"
    assert FeatureCache().root == tmp_path / "ovs3d_nerfstudio"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ovs3d_nerfstudio"
