"""Teachers: preprocessing, batching, shapes, identities, offline weight lookup, import paths."""

import re
import time
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from ovs3d_nerfstudio.teachers import (
    ClipTeacher,
    ClipTeacherConfig,
    DenseTeacher,
    DinoTeacherConfig,
    TeacherError,
)
from ovs3d_nerfstudio.teachers.openclip import find_cached_weights

TESTS_DIR = Path(__file__).parent


def smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A [3, H, W] image in [0, 1] without pixel-level noise, quantised to 8 bits like a photo."""
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)[0]
    return (image * 255).round() / 255


@pytest.fixture
def empty_weight_caches(tmp_path, monkeypatch):
    """Points every cache a teacher may read at empty folders, so the missing-weights path is
    tested even on a machine that has the real weights."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


@pytest.fixture
def custom_teachers_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))


# ---------------------------------------------------------------- open_clip teacher


def test_clip_teacher_implements_protocol_and_is_frozen(tiny_clip_teacher):
    assert isinstance(tiny_clip_teacher, ClipTeacher)
    assert not isinstance(tiny_clip_teacher, torch.nn.Module)  # keeps CLIP out of pipeline checkpoints
    assert tiny_clip_teacher.embed_dim == 16
    assert not tiny_clip_teacher.model.training
    assert all(not parameter.requires_grad for parameter in tiny_clip_teacher.model.parameters())


def test_encode_crops_shapes_for_any_sizes(tiny_clip_teacher):
    sizes = [(32, 32), (20, 50), (100, 40), (7, 9), (1, 1), (64, 17)]
    crops = [torch.rand(3, h, w) for h, w in sizes]
    embeddings = tiny_clip_teacher.encode_crops(crops)
    assert embeddings.shape == (len(sizes), 16)
    assert embeddings.dtype == torch.float32
    assert torch.isfinite(embeddings).all()
    assert tiny_clip_teacher.encode_crops([]).shape == (0, 16)


def test_encode_crops_batching_matches_one_at_a_time(tiny_clip_teacher):
    # 9 crops with batch_size 4: three encoder calls, mixed sizes inside each.
    crops = [smooth_image(h, w, seed) for seed, (h, w) in enumerate([(20, 50), (32, 32), (20, 50), (70, 30)] * 2)]
    crops.append(torch.rand(3, 45, 45))
    together = tiny_clip_teacher.encode_crops(crops)
    alone = torch.cat([tiny_clip_teacher.encode_crops([crop]) for crop in crops])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_model_size_crop_is_only_normalised(tiny_clip_teacher):
    crop = torch.rand(3, 32, 32)
    cfg = tiny_clip_teacher.model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    torch.testing.assert_close(tiny_clip_teacher.preprocess([crop])[0], (crop - mean) / std)


@pytest.mark.parametrize("size", [(20, 50), (100, 40), (7, 9), (64, 64), (33, 95)])
def test_preprocessing_matches_open_clip_transform(tiny_clip_teacher, size):
    """Same geometry (short-side resize, rounding, centre crop) as open_clip's PIL transform;
    the remaining difference is PIL's 8-bit output (about one grey level)."""
    image = smooth_image(*size, seed=size[0])
    cfg = tiny_clip_teacher.model.visual.preprocess_cfg
    transform = open_clip.image_transform(
        cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"], resize_mode=cfg["resize_mode"]
    )
    pil_image = Image.fromarray((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    expected = transform(pil_image)
    torch.testing.assert_close(tiny_clip_teacher.preprocess([image])[0], expected, atol=2.5 / 255 / 0.26, rtol=0)


def test_encode_text(tiny_clip_teacher):
    texts = ["red apple", "stapler", "green lawn"]
    embeddings = tiny_clip_teacher.encode_text(texts)
    assert embeddings.shape == (3, 16) and embeddings.dtype == torch.float32
    torch.testing.assert_close(tiny_clip_teacher.encode_text(["stapler"])[0], embeddings[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_random_weights_are_reproducible(tiny_clip_config, tiny_clip_teacher):
    """One identity must mean one set of weights (the identity keys the feature cache)."""
    other = tiny_clip_config.setup()
    assert other.identity == tiny_clip_teacher.identity
    crop = [torch.rand(3, 40, 40)]
    torch.testing.assert_close(other.encode_crops(crop), tiny_clip_teacher.encode_crops(crop))


def test_clip_weights_path_loads_and_changes_identity(tiny_clip_config, tiny_clip_teacher, tmp_path):
    state_dict = {key: value + 0.01 for key, value in tiny_clip_teacher.model.state_dict().items()}
    weights = tmp_path / "tiny.pt"
    torch.save(state_dict, weights)
    tiny_clip_config.weights_path = weights
    loaded = tiny_clip_config.setup()
    assert loaded.identity != tiny_clip_teacher.identity
    assert str(weights.resolve()) in loaded.identity and "random" not in loaded.identity
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state_dict[key])

    tiny_clip_config.weights_path = tmp_path / "missing.pt"
    with pytest.raises(TeacherError, match="does not exist"):
        tiny_clip_config.setup()


def test_clip_missing_weights_fail_fast_with_both_remedies(empty_weight_caches):
    start = time.monotonic()
    with pytest.raises(TeacherError) as raised:
        ClipTeacherConfig(model_name="ViT-B-16", pretrained="openai").setup()
    assert time.monotonic() - start < 5.0
    message = str(raised.value)
    assert "--pipeline.datamanager.clip.weights-path" in message
    assert "python -c \"import open_clip; open_clip.create_model('ViT-B-16', pretrained='openai')\"" in message
    assert "pretrained random" in message


def test_clip_weights_found_in_hf_cache(empty_weight_caches):
    snapshot = empty_weight_caches / "hf" / "hub" / "models--timm--vit_base_patch16_clip_224.openai"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0123abcd")
    weights = snapshot / "snapshots" / "0123abcd" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    assert find_cached_weights("ViT-B-16", "openai") == weights


def test_clip_weights_found_in_open_clip_url_cache(empty_weight_caches):
    weights = empty_weight_caches / "home" / ".cache" / "clip" / "ViT-B-16.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    assert find_cached_weights("ViT-B-16", "openai") == weights


def test_clip_unknown_model_or_tag(tmp_path):
    with pytest.raises(TeacherError, match="Unknown open_clip model 'ViT-B-61'.*ViT-B-16"):
        ClipTeacherConfig(model_name="ViT-B-61").setup()
    with pytest.raises(TeacherError, match="no pretrained tag 'not-a-tag'.*openai"):
        ClipTeacherConfig(model_name="ViT-B-16", pretrained="not-a-tag").setup()
    with pytest.raises(TeacherError, match="does not exist"):
        ClipTeacherConfig(model_name="x", model_config_path=tmp_path / "x.json").setup()


# ---------------------------------------------------------------- DINO teacher


def test_dino_teacher_grid_for_non_square_inputs(tiny_dino_teacher):
    assert isinstance(tiny_dino_teacher, DenseTeacher)
    assert not isinstance(tiny_dino_teacher, torch.nn.Module)
    assert (tiny_dino_teacher.stride, tiny_dino_teacher.feature_dim) == (8, 32)
    tokens = tiny_dino_teacher.encode_dense(torch.rand(2, 3, 48, 64))
    assert tokens.shape == (2, 6, 8, 32) and tokens.dtype == torch.float32
    assert tiny_dino_teacher.encode_dense(torch.rand(1, 3, 256, 256)).shape == (1, 32, 32, 32)


def test_dino_matches_timm_at_training_size(tiny_dino_teacher):
    """At 224 x 224 no interpolation happens: the tokens are timm's own forward pass."""
    images = torch.rand(1, 3, 224, 224)
    mean, std = tiny_dino_teacher.mean, tiny_dino_teacher.std
    assert tuple(mean.flatten().tolist()) == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)
    assert tuple(std.flatten().tolist()) == pytest.approx(timm.data.IMAGENET_DEFAULT_STD)
    with torch.no_grad():
        expected = tiny_dino_teacher.model.forward_features((images - mean) / std)[:, 1:]
    tokens = tiny_dino_teacher.encode_dense(images)
    torch.testing.assert_close(tokens.reshape(1, 28 * 28, 32), expected, atol=1e-5, rtol=1e-5)


def test_dino_position_embedding_keeps_class_token(tiny_dino_teacher):
    pos_embed = tiny_dino_teacher.model.pos_embed
    assert tiny_dino_teacher._position_embedding(28, 28) is pos_embed
    resized = tiny_dino_teacher._position_embedding(6, 8)
    assert resized.shape == (1, 1 + 6 * 8, 32)
    torch.testing.assert_close(resized[:, 0], pos_embed[:, 0])


def test_dino_rejects_sizes_off_the_stride(tiny_dino_teacher):
    with pytest.raises(ValueError, match="multiples of the stride 8.*50x64"):
        tiny_dino_teacher.encode_dense(torch.rand(1, 3, 50, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_dino_teacher.encode_dense(torch.rand(3, 48, 64))


def test_dino_weights_path_round_trip(tiny_dino_config, tiny_dino_teacher, tmp_path):
    state_dict = {key: value + 0.01 for key, value in tiny_dino_teacher.model.state_dict().items()}
    state_dict["head.weight"] = torch.zeros(1)  # classifier keys are tolerated
    weights = tmp_path / "dino.pth"
    torch.save(state_dict, weights)
    tiny_dino_config.weights_path = weights
    loaded = tiny_dino_config.setup()
    assert loaded.identity != tiny_dino_teacher.identity
    torch.testing.assert_close(loaded.model.pos_embed, state_dict["pos_embed"])

    del state_dict["norm.weight"]
    torch.save(state_dict, weights)
    with pytest.raises(TeacherError, match="norm.weight"):
        tiny_dino_config.setup()


def test_dino_missing_weights_fail_fast_with_both_remedies(empty_weight_caches):
    start = time.monotonic()
    with pytest.raises(TeacherError) as raised:
        DinoTeacherConfig().setup()
    assert time.monotonic() - start < 5.0
    message = str(raised.value)
    assert "--pipeline.datamanager.dino.weights-path" in message
    assert "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth" in message
    assert str(empty_weight_caches / "torch" / "hub" / "checkpoints" / "dino_vitbase8_pretrain.pth") in message


def test_dino_bad_settings():
    with pytest.raises(TeacherError, match="Unknown DINO v1 model.*vit_base_patch8_224_dino"):
        DinoTeacherConfig(model_name="vit_base_patch8_224_dinov2").setup()
    with pytest.raises(TeacherError, match="do not fit an overridden architecture"):
        DinoTeacherConfig(depth=1).setup()
    with pytest.raises(TeacherError, match="Unknown DINO pretrained tag"):
        DinoTeacherConfig(pretrained="imagenet").setup()


def test_dino_v1_table_matches_timm():
    """The architecture table must agree with timm's registered DINO entry points."""
    from ovs3d_nerfstudio.teachers.dino import DINO_V1_ARCHITECTURES

    assert set(DINO_V1_ARCHITECTURES) == set(timm.list_models("vit_*_dino"))
    for name in DINO_V1_ARCHITECTURES:
        assert name.split("_patch")[1].startswith(str(DINO_V1_ARCHITECTURES[name][0]))


# ---------------------------------------------------------------- import paths


def test_custom_teachers_by_import_path(custom_teachers_importable):
    clip = ClipTeacherConfig(source="custom_teachers:make_clip_teacher").setup()
    assert clip.identity == "tests:colour-stats"
    assert clip.encode_crops([torch.rand(3, 5, 7)]).shape == (1, 6)
    dense = DinoTeacherConfig(source="custom_teachers:make_dense_teacher").setup()
    assert dense.encode_dense(torch.rand(1, 3, 8, 12)).shape == (1, 2, 3, 3)


@pytest.mark.parametrize(
    "source, message",
    [
        ("no_such_module_xyz:make", "Cannot import module 'no_such_module_xyz'"),
        ("custom_teachers:no_such_factory", "has no attribute 'no_such_factory'"),
        ("custom_teachers.make_clip_teacher", "Unknown CLIP teacher 'custom_teachers.make_clip_teacher'"),
        ("custom_teachers:", "neither a built-in name nor an import path"),
        ("custom_teachers:make_not_a_teacher", "returned object, which does not implement ClipTeacher"),
        ("custom_teachers:make_dense_teacher", "does not implement ClipTeacher"),
    ],
)
def test_bad_clip_import_paths(custom_teachers_importable, source, message):
    with pytest.raises(TeacherError, match=re.escape(message)):
        ClipTeacherConfig(source=source).setup()


def test_bad_dense_import_path(custom_teachers_importable):
    with pytest.raises(TeacherError, match="does not implement DenseTeacher"):
        DinoTeacherConfig(source="custom_teachers:make_clip_teacher").setup()
    with pytest.raises(TeacherError, match="Unknown dense teacher 'dinov2'"):
        DinoTeacherConfig(source="dinov2").setup()
