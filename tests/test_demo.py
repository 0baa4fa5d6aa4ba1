"""``ovs3d-demo``'s code path at a miniature size: scene, full schedule, eval, video, legend."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs3d_nerfstudio.demo import DemoConfig, labels_shown, run_demo, video_frame
from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.synthetic.profiles import PROFILES, Profile
from tiny_run import FEW_RAYS, tiny_schedule

MINIATURE = Profile(
    name="miniature",
    description="a few steps of every phase on 64x48 images",
    width=64,
    height=48,
    num_views=6,
    overrides={
        **PROFILES["cpu"].overrides,
        **tiny_schedule(reconstruction=4, frozen=2, joint=2),
        **FEW_RAYS,
        "pipeline.datamanager.num_patches": 1,
        "pipeline.datamanager.patch_tokens": 2,
        "pipeline.datamanager.patch_rays_per_token": 1,
    },
)


def read_video(path: Path) -> np.ndarray:
    import mediapy

    from ovs3d_nerfstudio.bundled_ffmpeg import provide_ffmpeg

    provide_ffmpeg()
    return np.asarray(mediapy.read_video(str(path)))


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    config = DemoConfig(
        output_dir=root / "out", profile="miniature", teachers="auto", cache_dir=root / "cache", video_frames=4
    )
    first = run_demo(config, profiles={"miniature": MINIATURE})
    cache_files = {p: p.stat().st_mtime_ns for p in (root / "cache").rglob("*.pt")}
    second = run_demo(config, profiles={"miniature": MINIATURE})
    return first, second, cache_files, root


def test_demo_writes_metrics_video_and_legend(demo_runs):
    first, _, _, _ = demo_runs
    results = json.loads(first["metrics"].read_text())
    assert 0.0 <= results["results"]["miou"] <= 1.0 and 0.0 <= results["results"]["accuracy"] <= 1.0
    assert results["teachers"] == "synthetic" and "no local weights" in results["teachers_note"]  # said plainly
    assert len(read_video(first["video"])) == 4
    assert first["legend"].stat().st_size > 0
    assert first["config"].is_file()


def test_video_is_readable_and_shows_the_labels_of_the_eval_images(demo_runs):
    first, _, _, _ = demo_runs
    frames = read_video(first["video"])
    height, width = frames.shape[1:3]
    assert height >= 240 and width >= 320
    report = json.loads(first["metrics"].read_text())
    assert report["video"]["size"] == [width, height]
    shown = report["labels_shown"]
    assert len(shown["per_video_frame"]) == 4 and len(shown["per_eval_view"]) == 5
    assert statistics.median(shown["per_video_frame"]) >= statistics.median(shown["per_eval_view"]) >= 1


def test_ns_render_camera_path_renders_the_demo_path(demo_runs, tmp_path):
    from nerfstudio.scripts.render import RenderCameraPath

    first, _, _, _ = demo_runs
    output = tmp_path / "labels.mp4"
    RenderCameraPath(
        load_config=first["config"],
        camera_path_filename=first["camera_path"],
        output_path=output,
        rendered_output_names=["labels"],
    ).main()
    path = json.loads(first["camera_path"].read_text())
    frames = read_video(output)
    assert frames.shape[:3] == (len(path["camera_path"]), path["render_height"], path["render_width"])


def test_labels_shown_ignores_stray_pixels():
    label_ids = torch.zeros(20, 20, dtype=torch.long)
    label_ids[:2, :] = 1  # 40 of 400 pixels: 10 %
    label_ids[5, 5] = 2  # 1 pixel: 0.25 %, below the 0.5 % threshold
    assert labels_shown(label_ids, num_labels=4) == 2
    assert labels_shown(label_ids, num_labels=4, min_fraction=0.0025) == 3


def test_video_frame_puts_rgb_labels_and_legend_side_by_side():
    rgb = torch.full((3, 5, 3), 1.0)
    labels = torch.zeros(3, 5, 3)
    legend = np.full((7, 4, 3), 9, dtype=np.uint8)
    frame = video_frame(rgb, labels, legend, enlarge=2)
    assert frame.shape == (8, 24, 3)  # height max(6, 7) padded to even; width 10 + 10 + 4
    assert (frame[:6, :10] == 255).all() and (frame[:6, 10:20] == 0).all() and (frame[:7, 20:24] == 9).all()
    assert (frame[6:, :20] == 255).all() and (frame[7] == 255).all()  # white padding


def test_rerun_gets_its_own_folder_and_reuses_features(demo_runs):
    first, second, cache_files, root = demo_runs
    assert first["run"] != second["run"] and first["metrics"].is_file() and second["metrics"].is_file()
    assert cache_files, "the first run cached no features"
    # The rerun read the same cache entries without rewriting them.
    assert {p: p.stat().st_mtime_ns for p in (root / "cache").rglob("*.pt")} == cache_files


def test_real_teachers_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserFacingError, match="no local weights"):
        run_demo(DemoConfig(output_dir=tmp_path, profile="miniature", teachers="real"), profiles={"miniature": MINIATURE})
