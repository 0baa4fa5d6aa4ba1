"""``ovs3d-demo``'s code path at a miniature size: scene, full schedule, eval, video, legend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovs3d_nerfstudio.demo import DemoConfig, run_demo
from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.synthetic.benchmark import PROFILES, Profile

MINIATURE = Profile(
    name="miniature",
    description="a few steps of every phase on 64x48 images",
    width=64,
    height=48,
    num_views=6,
    overrides={
        **PROFILES["cpu"].overrides,
        "pipeline.model.schedule.reconstruction_steps": 4,
        "pipeline.model.schedule.frozen_steps": 2,
        "pipeline.model.schedule.joint_steps": 2,
        "pipeline.model.num_proposal_samples_per_ray": (16, 8),
        "pipeline.model.num_nerf_samples_per_ray": 8,
        "pipeline.datamanager.train_num_rays_per_batch": 64,
        "pipeline.datamanager.num_patches": 1,
        "pipeline.datamanager.patch_tokens": 2,
        "pipeline.datamanager.patch_rays_per_token": 1,
    },
)


def video_frames(path: Path) -> int:
    import mediapy

    from ovs3d_nerfstudio.render_support import provide_ffmpeg

    provide_ffmpeg()
    return len(mediapy.read_video(str(path)))


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
    assert video_frames(first["video"]) == 4
    assert first["legend"].stat().st_size > 0
    assert first["config"].is_file()


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
