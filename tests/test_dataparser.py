"""The ovs3d-data dataparser on generated scenes: outputs, splits, both layouts, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs3d_nerfstudio.data.labels import LabelError, read_labels, validate_labels
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataError, Ovs3dDataParserConfig
from ovs3d_nerfstudio.data.procedural import render_scene, write_scene
from tiny_scene import tiny_scene_spec

MASK_VIEWS = (0, 3, 5)
SPEC = tiny_scene_spec(seed=2)
LABELS = SPEC.labels


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_scene(SPEC, tmp_path_factory.mktemp("dataparser") / "scene", MASK_VIEWS)


@pytest.fixture
def scene(pristine: Path, tmp_path: Path) -> Path:
    """A private copy that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "scene"))


def parse(data: Path, split: str = "train", **options):
    return Ovs3dDataParserConfig(data=data, **options).setup().get_dataparser_outputs(split)


def views(outputs) -> list:
    """View indices of a split's images (the generated scenes name each image by its index)."""
    return [int(path.stem) for path in outputs.image_filenames]


def test_llff_outputs(pristine: Path):
    outputs = parse(pristine)
    n = SPEC.rig.num_views
    assert len(outputs.image_filenames) == n and outputs.cameras.shape == (n,)
    assert outputs.image_filenames[0].name == "000.png"
    assert (outputs.cameras.width == SPEC.width).all() and (outputs.cameras.height == SPEC.height).all()
    assert np.allclose(outputs.cameras.fx.numpy(), SPEC.rig.focal) and np.allclose(outputs.cameras.fy.numpy(), SPEC.rig.focal)
    assert np.allclose(outputs.cameras.cx.numpy(), SPEC.width / 2) and np.allclose(outputs.cameras.cy.numpy(), SPEC.height / 2)
    assert abs(outputs.cameras.camera_to_worlds[:, :, 3].abs().max().item() - 1.0) < 1e-5
    assert outputs.scene_box.aabb.tolist() == [[-1.0] * 3, [1.0] * 3]

    meta = outputs.metadata
    assert meta["labels"] == LABELS
    assert sorted(meta["mask_paths"]) == list(MASK_VIEWS)  # train uses all views: positions are view indices
    assert meta["mask_paths"][3]["blue mug"] == pristine / "segmentations" / "03" / "blue mug.png"
    assert set(meta["mask_paths"][0]) == set(LABELS)
    assert views(outputs) == list(range(n))
    # Bounds follow the poses' scale.
    raw_bounds = np.load(pristine / "poses_bounds.npy")[:, 15:]
    np.testing.assert_allclose(meta["near_far"].numpy(), raw_bounds * outputs.dataparser_scale, rtol=1e-5)


def test_intrinsics_follow_resized_images(scene: Path):
    for path in (scene / "images").iterdir():
        Image.open(path).resize((SPEC.width * 2, SPEC.height * 2)).save(path)
    shutil.rmtree(scene / "segmentations" / "00")
    shutil.rmtree(scene / "segmentations" / "03")
    shutil.rmtree(scene / "segmentations" / "05")
    cameras = parse(scene).cameras
    assert np.allclose(cameras.fx.numpy(), 2 * SPEC.rig.focal) and (cameras.width == 2 * SPEC.width).all()


@pytest.mark.parametrize(
    "options, train_views, eval_views",
    [
        ({}, list(range(8)), list(MASK_VIEWS)),
        ({"eval_mode": "interval", "eval_interval": 4}, [1, 2, 3, 5, 6, 7], [0, 4]),
        ({"eval_mode": "all"}, list(range(8)), list(range(8))),
        ({"eval_mode": "masks-held-out"}, [1, 2, 4, 6, 7], list(MASK_VIEWS)),
    ],
)
def test_splits(pristine: Path, options, train_views, eval_views):
    train, evaluation = parse(pristine, "train", **options), parse(pristine, "test", **options)
    assert views(train) == train_views
    assert views(evaluation) == eval_views
    assert [p.name for p in evaluation.image_filenames] == [f"{i:03d}.png" for i in eval_views]
    assert evaluation.cameras.shape == (len(eval_views),)
    # Split-local mask indices point at the same files as the view indices (eval mode 'all'
    # trains on every view, so there the positions are the view indices).
    by_view = parse(pristine, "train", eval_mode="all").metadata["mask_paths"]
    for position, view in enumerate(eval_views):
        assert evaluation.metadata["mask_paths"].get(position) == by_view.get(view)
    assert evaluation.metadata["near_far"].shape == (len(eval_views), 2)


def test_masks_mode_without_masks_evaluates_every_interval(scene: Path):
    for view in MASK_VIEWS:
        shutil.rmtree(scene / "segmentations" / f"{view:02d}")
    assert views(parse(scene, "test", eval_interval=3)) == [0, 3, 6]
    assert views(parse(scene, "train")) == list(range(8))


def test_held_out_masks_needs_masks_and_a_view_to_train_on(scene: Path):
    for view in MASK_VIEWS:
        shutil.rmtree(scene / "segmentations" / f"{view:02d}")
    with pytest.raises(Ovs3dDataError, match="no ground-truth masks"):
        parse(scene, "train", eval_mode="masks-held-out")
    spec = tiny_scene_spec(seed=2)
    spec.rig.num_views = 2
    every_view_annotated = write_scene(spec, scene.parent / "annotated", mask_views=[0, 1])
    with pytest.raises(Ovs3dDataError, match="no view to train on"):
        parse(every_view_annotated, "train", eval_mode="masks-held-out")


def test_labels_option_and_labels_file(scene: Path):
    (scene / "segmentations" / "classes.txt").unlink()
    shutil.rmtree(scene / "segmentations" / "03")
    shutil.rmtree(scene / "segmentations" / "05")
    for label in ("green lawn", "wood wall"):
        (scene / "segmentations" / "00" / f"{label}.png").unlink()
    # Masks match labels ignoring case and spacing; a view may lack some labels' masks.
    outputs = parse(scene, labels=("Red  Apple", "blue mug", "yellow lemon", "background"))
    assert outputs.metadata["labels"] == ["Red  Apple", "blue mug", "yellow lemon", "background"]
    assert outputs.metadata["mask_paths"][0]["Red  Apple"].name == "red apple.png"
    labels_file = scene / "my labels.txt"
    labels_file.write_text("# objects\nred apple\n\nblue mug\nyellow lemon\n", encoding="utf-8")
    assert parse(scene, labels_file=labels_file).metadata["labels"] == ["red apple", "blue mug", "yellow lemon"]


def _write_transforms(scene: Path) -> None:
    """The generated scene in nerfstudio format, as ns-process-data would write it."""
    poses = render_scene(SPEC).poses
    frames = [
        {
            "file_path": f"images/{i:03d}.png",
            "depth_file_path": f"depths/{i:03d}.png",
            "transform_matrix": np.vstack([pose, [0, 0, 0, 1]]).tolist(),
        }
        for i, pose in enumerate(poses)
    ]
    meta = dict(
        fl_x=SPEC.rig.focal, fl_y=SPEC.rig.focal, cx=SPEC.width / 2, cy=SPEC.height / 2, w=SPEC.width, h=SPEC.height
    )
    (scene / "transforms.json").write_text(json.dumps({**meta, "frames": frames[::-1]}), encoding="utf-8")
    (scene / "poses_bounds.npy").unlink()


def test_nerfstudio_format(scene: Path):
    _write_transforms(scene)
    reordered = LABELS[::-1]
    (scene / "labels.txt").write_text("\n".join(reordered) + "\n", encoding="utf-8")
    options = dict(orientation_method="none", center_method="none", auto_scale_poses=False)
    train = parse(scene, **options)
    assert [p.name for p in train.image_filenames] == [f"{i:03d}.png" for i in range(8)]
    np.testing.assert_allclose(train.cameras.camera_to_worlds.numpy(), render_scene(SPEC).poses, atol=1e-5)
    assert np.allclose(train.cameras.fx.numpy(), SPEC.rig.focal)
    assert train.metadata["labels"] == reordered  # labels.txt wins over segmentations/classes.txt
    assert train.metadata["near_far"] is None
    evaluation = parse(scene, "test", **options)
    assert views(evaluation) == list(MASK_VIEWS)
    assert evaluation.metadata["mask_paths"][1]["red apple"].parent.name == "03"
    # nerfstudio's per-image extras follow the split.
    assert [p.name for p in evaluation.metadata["depth_filenames"]] == [f"{i:03d}.png" for i in MASK_VIEWS]
    assert parse(scene / "transforms.json").metadata["labels"] == reordered


def test_nerfstudio_format_reads_full_resolution_images(scene: Path, monkeypatch):
    """ns-process-data also writes images_2/...; nerfstudio would pick them for large photos,
    which would shrink the rays (ray-downscale is relative to the images) and mismatch the masks."""
    from nerfstudio.data.dataparsers import nerfstudio_dataparser

    _write_transforms(scene)
    (scene / "images_2").mkdir()
    for image in (scene / "images").iterdir():
        shutil.copy(image, scene / "images_2" / image.name)
    monkeypatch.setattr(nerfstudio_dataparser, "MAX_AUTO_RESOLUTION", 8)  # our photos count as large
    train = parse(scene)
    assert {p.parent.name for p in train.image_filenames} == {"images"}
    assert int(train.cameras.width[0]) == SPEC.width


def test_nerfstudio_format_with_fixed_split_is_refused(scene: Path):
    _write_transforms(scene)
    meta = json.loads((scene / "transforms.json").read_text())
    meta["train_filenames"] = ["images/000.png"]
    (scene / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(Ovs3dDataError, match="Remove those keys"):
        parse(scene)


def _expect(scene: Path, error, *fragments: str, **options) -> None:
    with pytest.raises(error) as caught:
        parse(scene, **options)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_missing_folder(tmp_path: Path):
    _expect(tmp_path / "nowhere", Ovs3dDataError, "does not exist")


def test_unknown_layout(tmp_path: Path):
    _expect(tmp_path, Ovs3dDataError, "neither poses_bounds.npy", "transforms.json")


def test_no_images(scene: Path):
    for path in (scene / "images").iterdir():
        path.unlink()
    _expect(scene, Ovs3dDataError, "No images in")


def test_images_of_different_sizes(scene: Path):
    Image.new("RGB", (30, 20)).save(scene / "images" / "004.png")
    _expect(scene, Ovs3dDataError, "000.png is 64x48", "004.png is 30x20")


def test_poses_bounds_shape(scene: Path):
    np.save(scene / "poses_bounds.npy", np.zeros((8, 15)))
    _expect(scene, Ovs3dDataError, "shape [8, 15]", "[N, 17]")


def test_poses_bounds_count(scene: Path):
    np.save(scene / "poses_bounds.npy", np.load(scene / "poses_bounds.npy")[:7])
    _expect(scene, Ovs3dDataError, "7 poses", "8 images")


def test_no_labels_anywhere(scene: Path):
    (scene / "segmentations" / "classes.txt").unlink()
    _expect(scene, Ovs3dDataError, "no labels", "classes.txt", "--labels-file", "--labels")


def test_missing_labels_file(scene: Path):
    _expect(scene, Ovs3dDataError, "labels_file", labels_file=scene / "absent.txt")


def test_empty_label(scene: Path):
    _expect(scene, LabelError, "Label #2", "is empty", labels=("red apple", "  "))


def test_duplicate_label_in_file(scene: Path):
    (scene / "segmentations" / "classes.txt").write_text("red apple\nblue mug\nRed   apple\n", encoding="utf-8")
    _expect(scene, LabelError, "Duplicate label 'Red   apple'", "same as 'red apple'")


def test_mask_folder_not_an_index(scene: Path):
    (scene / "segmentations" / "front").mkdir()
    _expect(scene, Ovs3dDataError, "front", "not named by a view index")


def test_mask_folder_beyond_last_view(scene: Path):
    (scene / "segmentations" / "03").rename(scene / "segmentations" / "12")
    _expect(scene, Ovs3dDataError, "names view 12", "only 8 images")


def test_mask_of_unknown_label(scene: Path):
    Image.new("L", (SPEC.width, SPEC.height)).save(scene / "segmentations" / "00" / "purple cow.png")
    _expect(scene, Ovs3dDataError, "'purple cow'", "'red apple'", "'wood wall'")


def test_mask_of_wrong_size(scene: Path):
    Image.new("L", (32, 24)).save(scene / "segmentations" / "05" / "blue mug.png")
    _expect(scene, Ovs3dDataError, "blue mug.png is 32x24", "005.png is 64x48")


def test_read_and_validate_labels(tmp_path: Path):
    path = tmp_path / "labels.txt"
    path.write_text("# header\n  Portuguese egg tart  \n\na Hatsune Miku statue\n", encoding="utf-8")
    assert read_labels(path) == ["Portuguese egg tart", "a Hatsune Miku statue"]
    assert validate_labels([" wood wall "], "test") == ["wood wall"]
    with pytest.raises(LabelError, match="No labels in test"):
        validate_labels([], "test")
    with pytest.raises(LabelError, match="does not exist"):
        read_labels(tmp_path / "absent.txt")
