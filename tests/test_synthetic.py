"""Synthetic benchmark: layouts shaped like 3D-OVS with exact masks, and teachers with documented behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.teacher_calibration import clip_statistics, dino_statistics
from ovs3d_nerfstudio.data.procedural import mask_folder_name, render_scene
from ovs3d_nerfstudio.features.clip_pyramid import PyramidConfig, extract_pyramid
from ovs3d_nerfstudio.synthetic import (
    SyntheticClipParams,
    SyntheticClipTeacher,
    SyntheticDinoParams,
    SyntheticDinoTeacher,
    benchmark_mask_views,
    scene_layouts,
    synthetic_clip,
    synthetic_dino,
    write_benchmark_scene,
)
from ovs3d_nerfstudio.teachers import ClipTeacher, ClipTeacherConfig, DenseTeacher, DinoTeacherConfig

LAYOUTS = sorted(scene_layouts())
BACKGROUND_WORDS = {"green lawn", "grey stone wall", "desktop", "wooden shelf", "brick wall", "wooden floor", "white wall"}
SMALL_OBJECTS = {
    "fruit_lawn": "a yellow tennis ball",
    "desk": "orange sticky notes",
    "shelf": "yellow lemon",
    "living_room": "red toy car",
}
"""A small object per layout whose colour word has no look-alike in its scene."""


@pytest.fixture(scope="module")
def clip() -> SyntheticClipTeacher:
    return synthetic_clip()


@pytest.fixture(scope="module")
def dino() -> SyntheticDinoTeacher:
    return synthetic_dino()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    """Every layout written at the benchmark's default size, as a user would get it."""
    root = tmp_path_factory.mktemp("synthetic")
    return {name: write_benchmark_scene(name, root / name, seed=0) for name in LAYOUTS}


def first_view(name: str) -> Tuple[torch.Tensor, torch.Tensor, list]:
    """View 0 of a layout at the default size (a one-view rig puts its camera where view 0 is)."""
    spec = scene_layouts()[name](0, num_views=1)
    scene = render_scene(spec)
    image = torch.from_numpy(scene.images[0]).permute(2, 0, 1).float() / 255
    return image, torch.from_numpy(scene.label_maps[0]), spec.labels


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


# ---------------------------------------------------------------- scenes


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_is_a_function_of_the_seed(name: str):
    layout = scene_layouts()[name]
    first, again, other = (render_scene(layout(seed, width=40, height=30, num_views=3)) for seed in (5, 5, 6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.images, other.images)


@pytest.mark.parametrize("name", LAYOUTS)
def test_written_layout_has_the_3d_ovs_shape(written, name: str):
    root: Path = written[name]
    labels = (root / "segmentations" / "classes.txt").read_text(encoding="utf-8").splitlines()
    num_views = len(list((root / "images").iterdir()))
    assert 20 <= num_views <= 30
    assert np.load(root / "poses_bounds.npy").shape == (num_views, 17)
    assert labels[-1] in BACKGROUND_WORDS, "the class list ends with a background word, as in 3D-OVS"
    mask_views = benchmark_mask_views(num_views)
    assert len(mask_views) == 5
    fractions = []
    for view in mask_views:
        folder = root / "segmentations" / mask_folder_name(view)
        masks = np.stack([np.asarray(Image.open(folder / f"{label}.png")) for label in labels])
        assert set(np.unique(masks)) <= {0, 255}
        assert ((masks > 0).sum(axis=0) == 1).all(), "masks are disjoint and cover every pixel"
        fractions.append((masks > 0).mean(axis=(1, 2)))
    fractions = np.stack(fractions)
    small = [label for label, f in zip(labels, fractions.T) if (f > 0).all() and (f < 0.02).all()]
    assert SMALL_OBJECTS[name] in small, f"small objects: {small}"
    assert fractions.max() > 0.3, "a large background surface fills much of every view"


@pytest.mark.parametrize("name", LAYOUTS)
def test_written_masks_are_the_exact_render(written, name: str):
    spec = scene_layouts()[name](0)
    scene = render_scene(spec)
    view = benchmark_mask_views()[2]
    folder = written[name] / "segmentations" / mask_folder_name(view)
    masks = np.stack([np.asarray(Image.open(folder / f"{label}.png")) for label in spec.labels])
    np.testing.assert_array_equal(masks.argmax(axis=0), scene.label_maps[view])
    image = np.asarray(Image.open(written[name] / "images" / f"{view:03d}.png"))
    np.testing.assert_array_equal(image, scene.images[view])


def test_unknown_layout_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="Unknown benchmark layout 'garden'"):
        write_benchmark_scene("garden", tmp_path)


# ---------------------------------------------------------------- teachers: loading


def test_teachers_load_through_the_import_path_config():
    clip = ClipTeacherConfig(source="ovs3d_nerfstudio.synthetic.teachers:synthetic_clip").setup()
    dino = DinoTeacherConfig(source="ovs3d_nerfstudio.synthetic.teachers:synthetic_dino").setup()
    assert isinstance(clip, ClipTeacher) and isinstance(clip, SyntheticClipTeacher)
    assert isinstance(dino, DenseTeacher) and isinstance(dino, SyntheticDinoTeacher)
    assert dino.stride == 8


def test_identity_names_version_and_every_parameter():
    default = SyntheticClipTeacher()
    assert default.identity.startswith("synthetic-clip:v")
    assert SyntheticClipTeacher(SyntheticClipParams(noise=0.3)).identity != default.identity
    wider = SyntheticClipTeacher(SyntheticClipParams(embed_dim=128))
    assert wider.embed_dim == 128 and wider.encode_crops([torch.rand(3, 9, 9)]).shape == (1, 128)
    assert SyntheticDinoTeacher(SyntheticDinoParams(bandwidth=2.0)).identity != SyntheticDinoTeacher().identity


# ---------------------------------------------------------------- CLIP-like teacher


def test_crops_of_any_size_batched_and_deterministic(clip):
    generator = torch.Generator().manual_seed(0)
    crops = [torch.rand(3, h, w, generator=generator) for h, w in [(1, 1), (7, 9), (20, 50), (64, 17), (6, 6)]]
    together = clip.encode_crops(crops)
    assert together.shape == (5, clip.embed_dim) and torch.isfinite(together).all()
    alone = torch.cat([clip.encode_crops([crop]) for crop in crops])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clip.encode_crops(crops), together, atol=0, rtol=0)
    assert clip.encode_crops([]).shape == (0, clip.embed_dim)


def test_crop_embedding_depends_on_the_crop_pixels_only(clip):
    image, _, _ = first_view("fruit_lawn")
    other = torch.rand_like(image)
    box = (slice(None), slice(40, 70), slice(30, 80))
    other[box] = image[box]  # same crop, entirely different surroundings
    same = clip.encode_crops([image[box], other[box]])
    assert torch.equal(same[0], same[1])
    changed = image[box].clone()
    changed[:, 10:14, 20:24] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    assert not torch.allclose(clip.encode_crops([changed])[0], same[0])


@pytest.mark.parametrize("name", LAYOUTS)
def test_small_object_loses_to_the_background_unless_cropped_tightly(clip, name: str):
    """CLIP's failure that RDA addresses: the area of a crop decides its embedding."""
    image, label_map, labels = first_view(name)
    target = labels.index(SMALL_OBJECTS[name])
    rows, cols = torch.nonzero(label_map == target, as_tuple=True)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    text = clip.encode_text(labels)

    tight = cosine(clip.encode_crops([image[:, y0:y1, x0:x1]]), text)[0]
    assert int(tight.argmax()) == target

    # A crop four times the object's size, centred on it: mostly background.
    cy, cx, half = (y0 + y1) // 2, (x0 + x1) // 2, 2 * max(y1 - y0, x1 - x0)
    top, left = max(cy - half, 0), max(cx - half, 0)
    region = label_map[top : cy + half, left : cx + half]
    background = int(region.flatten().mode().values)
    assert labels[background] in BACKGROUND_WORDS and (region == target).float().mean() < 0.15
    loose = cosine(clip.encode_crops([image[:, top : cy + half, left : cx + half]]), text)[0]
    assert loose[background] > loose[target]


def test_look_alike_labels_are_closer_in_text_space(clip):
    for anchor, look_alike, unrelated in [
        ("red apple", "red tomato", "blue water bottle"),
        ("black stapler", "black computer mouse", "blue ceramic mug"),
        ("potato chips bag", "yellow lemon", "green tea can"),
    ]:
        similarity = cosine(clip.encode_text([look_alike, unrelated]), clip.encode_text([anchor]))[:, 0]
        # CLIP's text embeddings are clustered: unrelated labels still have cosine ~0.75.
        assert similarity[0] > similarity[1] + 0.15, anchor
    # Text never sees pixels: the same label always embeds the same way; unknown words still embed.
    torch.testing.assert_close(clip.encode_text(["a Hatsune Miku statue"]), clip.encode_text(["a Hatsune Miku statue"]))
    assert torch.isfinite(clip.encode_text(["a Hatsune Miku statue"])).all()


def test_pyramid_extraction_accepts_the_synthetic_teacher(clip):
    image, _, _ = first_view("shelf")
    small = F.interpolate(image[None], size=(30, 40), mode="area")[0]
    pyramid = extract_pyramid(small, clip, PyramidConfig())
    assert pyramid.num_scales == 3 and pyramid.dense(0).shape == (30, 40, clip.embed_dim)


# ---------------------------------------------------------------- DINO-like teacher


def test_dense_tokens_shape_and_determinism(dino):
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    tokens = dino.encode_dense(images)
    assert tokens.shape == (2, 6, 8, dino.feature_dim) and torch.isfinite(tokens).all()
    torch.testing.assert_close(dino.encode_dense(images), tokens, atol=0, rtol=0)
    with pytest.raises(ValueError, match="multiples of the stride 8"):
        dino.encode_dense(torch.rand(1, 3, 30, 64))


@pytest.mark.parametrize("name", LAYOUTS)
def test_tokens_on_one_surface_agree_more_than_across_surfaces(dino, name: str):
    image, label_map, labels = first_view(name)
    tokens = F.normalize(dino.encode_dense(image[None])[0], dim=-1).flatten(0, 1)
    height, width = label_map.shape
    cells = label_map.reshape(height // 8, 8, width // 8, 8).permute(0, 2, 1, 3).flatten(2)
    # Cells that lie entirely on one surface.
    pure = (cells == cells[..., :1]).all(dim=-1).flatten()
    cell_label = cells[..., 0].flatten()[pure]
    similarity = tokens[pure] @ tokens[pure].T
    same = cell_label[:, None] == cell_label[None, :]
    off_diagonal = ~torch.eye(len(cell_label), dtype=torch.bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.3
    for label in cell_label.unique():
        mine = cell_label == label
        if mine.sum() >= 2:
            within = similarity[mine][:, mine][~torch.eye(int(mine.sum()), dtype=torch.bool)].mean()
            assert within > similarity[mine][:, ~mine].mean(), labels[int(label)]


# ---------------------------------------------------------------- calibration against the real models


@pytest.mark.parametrize("name", LAYOUTS)
def test_clip_cosines_are_in_clips_documented_range(name: str):
    """Matched image-text cosines 0.2-0.35, other classes lower by hundredths (hence CLIP's logit scale 100)."""
    stats = clip_statistics(scene_layouts()[name](0), window_step=4)
    assert stats["pure_windows"] > 1000
    assert 0.2 <= stats["matched_cosine"]["median"] <= 0.35
    assert 0.2 <= stats["matched_cosine"]["q10"] and stats["matched_cosine"]["q90"] <= 0.4
    assert abs(stats["gap_to_best_other"]["median"]) <= 0.1
    assert stats["gap_to_best_other"]["q90"] <= 0.15


@pytest.mark.parametrize("name", LAYOUTS)
def test_dino_tokens_fall_on_either_side_of_the_fda_shift(name: str):
    """b = 0.7: tokens of one surface mostly above it, of different surfaces mostly below."""
    stats = dino_statistics(scene_layouts()[name](0))
    assert stats["same_surface_above_shift"] >= 0.65
    assert stats["different_surface_below_shift"] >= 0.95
