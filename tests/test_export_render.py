"""Label videos and images with ``ns-render``, ``ovs3d-legend`` and ``ovs3d-export`` on one tiny run.

The run is the session's shared tiny run (tests/tiny_run.py), trained once through the real
``ns-train`` CLI. The commands under test then run in this process through their
console-script entry points (``sys.argv`` set, then ``entrypoint()``, which is all their
console scripts do): a fresh ``ns-*`` process spends 30-45 s importing nerfstudio on a
loaded 2-core machine, so one per command would put this file far over its time budget.
(``UserFacingError`` reaching the user as one line, not a traceback, is tested on
``ns-train`` in test_train_end_to_end.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, List

import mediapy
import numpy as np
import open_clip  # noqa: F401  (see below)
import pytest
import torch
import yaml
from PIL import Image

# Both imported at collection, not first inside a test: importing open_clip (timm -> wandb ->
# pydantic) and nerfstudio's method registry (what ns-render loads) inspect the call stack
# against every loaded module, which is ~3x slower deep inside a test with everything loaded.
from nerfstudio.configs.method_configs import method_configs
from nerfstudio.scripts import render

from ovs3d_nerfstudio import export, legend
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.export import ExportLabelledPointCloud, read_ply
from ovs3d_nerfstudio.legend_image import PADDING, colours_to_uint8, legend_image, swatch_box
from ovs3d_nerfstudio.palette import palette
from ovs3d_nerfstudio.bundled_ffmpeg import provide_ffmpeg
from ovs3d_nerfstudio.runs import load_ovs3d_run

NUM_POINTS = 300


@pytest.fixture(scope="module")
def run_config(tiny_run) -> Path:
    return tiny_run[0] / "config.yml"


@pytest.fixture(scope="module")
def scene(tiny_run) -> Path:
    return tiny_run[0].parents[3] / "scene"  # <root>/outputs/tiny/ovs3d/run -> <root>/scene


@pytest.fixture(scope="module")
def labels(scene: Path) -> List[str]:
    return (scene / "segmentations" / "classes.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def ffmpeg():
    """ffmpeg on PATH as the package provides it (PATH restored afterwards)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", os.environ["PATH"])
        assert provide_ffmpeg() is not None
        yield


@pytest.fixture
def run_entrypoint(monkeypatch) -> Callable[..., None]:
    """Runs a console script's ``entrypoint`` with ``args`` as its command line, in this process."""

    def run(name: str, entrypoint: Callable[[], None], *args: str) -> None:
        monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
        entrypoint()

    return run


def palette_bytes(num_labels: int) -> np.ndarray:
    return colours_to_uint8(palette(num_labels))


# ----------------------------------------------------------------------------- ffmpeg
def test_provide_ffmpeg_puts_the_bundled_binary_on_path(tmp_path: Path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no system ffmpeg anywhere
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    linked = provide_ffmpeg()
    assert linked == tmp_path / "cache" / "ovs3d_nerfstudio" / "bin" / "ffmpeg"
    assert shutil.which("ffmpeg") == str(linked)
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("ffmpeg version")
    assert provide_ffmpeg() == linked  # again: found on PATH, nothing re-linked


# ------------------------------------------------------------------------- ns-render
def test_ns_render_spiral_writes_a_label_video(run_config: Path, scene: Path, labels, ffmpeg, run_entrypoint, tmp_path):
    video = tmp_path / "labels.mp4"
    run_entrypoint(
        "ns-render", render.entrypoint,
        "spiral", "--load-config", run_config, "--rendered-output-names", "labels", "--output-path", video,
        "--seconds", "1", "--frame-rate", "4", "--downscale-factor", "2",
    )  # fmt: skip
    frames = mediapy.read_video(video)
    width, height = Image.open(sorted((scene / "images").iterdir())[0]).size
    assert frames.shape == (4, height // 2, width // 2, 3)
    # Lossy video, but its pixels are still the palette's colours, not RGB renders.
    distance = np.abs(frames[..., None, :].astype(int) - palette_bytes(len(labels)).astype(int)).max(-1).min(-1)
    assert np.mean(distance < 40) > 0.9


@pytest.mark.parametrize("downscale", [1, 2])
def test_ns_render_dataset_writes_palette_label_images(
    run_config: Path, scene: Path, labels, run_entrypoint, tmp_path, downscale: int
):
    scale_args = ["--downscale-factor", str(downscale)] if downscale != 1 else []
    run_entrypoint(
        "ns-render", render.entrypoint,
        "dataset", "--load-config", run_config, "--split", "test", "--rendered-output-names", "labels",
        "--output-path", tmp_path, "--image-format", "png", *scale_args,
    )  # fmt: skip
    test_images = Ovs3dDataParserConfig(data=scene).setup().get_dataparser_outputs("test").image_filenames
    written = sorted((tmp_path / "test" / "labels").glob("*.png"))
    assert [path.stem for path in written] == sorted(path.stem for path in test_images)
    colours = {tuple(colour) for colour in palette_bytes(len(labels)).tolist()}
    for path, source in zip(written, sorted(test_images), strict=True):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        width, height = Image.open(source).size
        assert pixels.shape[:2] == (height // downscale, width // downscale)
        assert {tuple(pixel) for pixel in pixels.reshape(-1, 3).tolist()} <= colours


# ---------------------------------------------------------------------------- legend
def test_legend_image_rows_are_the_palette_colours():
    names = ["red apple", "a very long label name for a statue", "x"]
    image = legend_image(names, palette(3))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    for row, colour in enumerate(palette_bytes(3)):
        left, top, right, bottom = swatch_box(row)
        assert (image[top:bottom, left:right] == colour).all()
        text_area = image[top:bottom, right + 2 :]
        assert (text_area < 100).all(-1).any(), f"no text drawn in row {row}"
    with pytest.raises(ValueError):
        legend_image(names, palette(2))


def test_ovs3d_legend_writes_the_runs_legend(run_config: Path, labels, run_entrypoint, tmp_path):
    path = tmp_path / "renders" / "labels-legend.png"
    run_entrypoint("ovs3d-legend", legend.entrypoint, "--load-config", run_config, "--output", path)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] == swatch_box(len(labels) - 1)[3] + PADDING
    for row, colour in enumerate(palette_bytes(len(labels))):
        left, top, right, bottom = swatch_box(row)
        assert (image[top:bottom, left:right] == colour).all()


def test_console_scripts_are_registered():
    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts["ovs3d-legend"] == "ovs3d_nerfstudio.legend:entrypoint"
    assert scripts["ovs3d-export"] == "ovs3d_nerfstudio.export:entrypoint"


def test_missing_config_is_one_clear_error(tmp_path: Path, run_entrypoint):
    missing = tmp_path / "missing" / "config.yml"
    with pytest.raises(UserFacingError, match="is not a file: pass the config.yml of a trained ovs3d run"):
        run_entrypoint("ovs3d-legend", legend.entrypoint, "--load-config", missing)


def test_another_methods_run_is_rejected(tmp_path: Path):
    config = tmp_path / "config.yml"
    config.write_text(yaml.dump(method_configs["nerfacto"]))
    with pytest.raises(UserFacingError, match="'nerfacto' run, not an ovs3d run"):
        load_ovs3d_run(config)


# ---------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def export_dir(run_config: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("export")
    args = ["--load-config", run_config, "--output-dir", output, "--num-points", NUM_POINTS]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ovs3d-export", *map(str, args)])
        export.entrypoint()
    return output


def test_ovs3d_export_writes_a_labelled_ply(export_dir: Path, labels):
    header = (export_dir / "point_cloud.ply").read_bytes().split(b"end_header\n")[0].decode("ascii")
    assert header.startswith("ply\nformat binary_little_endian 1.0\n")
    points = read_ply(export_dir / "point_cloud.ply")
    expected = [
        ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "|u1"), ("green", "|u1"), ("blue", "|u1"),
        ("label", "<i4"), ("rendered_red", "|u1"), ("rendered_green", "|u1"), ("rendered_blue", "|u1"),
    ]  # fmt: skip
    assert points.dtype.descr == expected
    # The scene is closed by a wall and a floor: every ray ends on an opaque surface.
    assert len(points) == NUM_POINTS
    assert np.isfinite(np.stack([points["x"], points["y"], points["z"]])).all()
    assert ((0 <= points["label"]) & (points["label"] < len(labels))).all()
    colours = np.stack([points["red"], points["green"], points["blue"]], axis=-1)
    np.testing.assert_array_equal(colours, palette_bytes(len(labels))[points["label"]])
    assert (export_dir / "labels.txt").read_text(encoding="utf-8").splitlines() == labels
    legend = np.asarray(Image.open(export_dir / "legend.png").convert("RGB"))
    left, top, right, bottom = swatch_box(len(labels) - 1)
    assert (legend[top:bottom, left:right] == palette_bytes(len(labels))[-1]).all()


def test_export_in_the_world_frame_undoes_the_dataparser_transform(run_config: Path, export_dir: Path, tmp_path):
    ExportLabelledPointCloud(run_config, tmp_path, num_points=NUM_POINTS, save_world_frame=True).main()
    model_frame = read_ply(export_dir / "point_cloud.ply")
    world_frame = read_ply(tmp_path / "point_cloud.ply")
    np.testing.assert_array_equal(world_frame["label"], model_frame["label"])
    outputs = load_ovs3d_run(run_config).datamanager.train_dataparser_outputs
    world = torch.from_numpy(np.stack([world_frame[axis] for axis in "xyz"], axis=-1))
    transform = outputs.dataparser_transform.float()
    back = (world @ transform[:, :3].T + transform[:, 3]) * outputs.dataparser_scale
    expected = np.stack([model_frame[axis] for axis in "xyz"], axis=-1)
    np.testing.assert_allclose(back.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_export_rejects_bad_options_before_loading_anything(tmp_path: Path):
    config = tmp_path / "config.yml"
    with pytest.raises(UserFacingError, match="--num-points"):
        ExportLabelledPointCloud(config, tmp_path, num_points=0).main()
    with pytest.raises(UserFacingError, match="--opacity-threshold"):
        ExportLabelledPointCloud(config, tmp_path, opacity_threshold=1.0).main()
