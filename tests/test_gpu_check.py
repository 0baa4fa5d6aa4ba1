"""The GPU device check (benchmarks/gpu_check.py) runs end to end on CPU at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ovs3d_nerfstudio.features.clip_pyramid import PyramidConfig, count_windows

REPOSITORY = Path(__file__).resolve().parents[1]
TINY_CLIP = REPOSITORY / "tests" / "assets" / "ovs3d-tiny-clip.json"


def run_check(out: Path, workdir: Path) -> subprocess.CompletedProcess:
    args = [
        sys.executable, str(REPOSITORY / "benchmarks" / "gpu_check.py"), "--out", str(out), "--workdir", str(workdir),
        "--profile", "cpu", "--views", "3", "--steps", "4", "--skip", "1",
        "--compare-rays-per-token", "2", "--compare-steps", "2", "--splat-steps", "3", "--min-section-seconds", "0",
        "--clip-model", TINY_CLIP.stem, "--clip-model-config", str(TINY_CLIP), "--clip-image", "12", "10",
        "--clip-batches", "64", "16",
    ]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPOSITORY))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def test_device_check_measures_every_section_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    result = run_check(out, tmp_path / "work")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "errors" not in report, report.get("errors")
    # No CUDA: the extension checks are skipped, saying why.
    assert report["extensions"] == {
        name: {"usable": False, "detail": "skipped: no CUDA device"} for name in ("tinycudann", "gsplat")
    }
    assert report["cuda_tests"]["detail"] == "skipped: no CUDA device"
    clip = report["clip_extraction"]
    assert clip["crops"] == count_windows(10, 12, PyramidConfig())
    assert set(clip["batches"]) == {"64", "16"} and all(b["crops_per_second"] > 0 for b in clip["batches"].values())
    training = report["training"]
    default, every = training["rays_per_token_1"], training["rays_per_token_2"]
    assert set(default["phases"]) == {"reconstruction", "segmentation-frozen", "segmentation-joint"}
    assert {"segmentation-frozen", "segmentation-joint"} <= set(every["phases"])
    # The CPU profile: 4 patches of 8x8 tokens; 2x2 rays per token renders 4 times as many.
    assert (default["patch_rays_per_step"], every["patch_rays_per_step"]) == (256, 1024)
    for run in (default, every):
        for phase in run["phases"].values():
            assert phase["ms_per_step"] > 0 and phase["memory"]["peak_mib"] > 0
    # ovs3d-splat at the CPU profile's splat settings (torch rasterizer here): every phase timed.
    splat = report["splat_training"]
    assert set(splat["phases"]) == {"reconstruction", "segmentation-frozen", "segmentation-joint"}
    assert all(phase["ms_per_step"] > 0 and phase["memory"]["peak_mib"] > 0 for phase in splat["phases"].values())
    assert splat["patch_rays_per_step"] == 256 and splat["random_rays_per_step"] == 512
    assert report["total_seconds"] < 420


def test_device_check_never_overwrites(tmp_path):
    out = tmp_path / "check.json"
    out.write_text("earlier results")
    result = run_check(out, tmp_path / "work")
    assert result.returncode == 2 and "exists" in result.stderr
    assert out.read_text() == "earlier results"


def test_the_cuda_tests_it_runs_exist():
    from benchmarks.gpu_check import CUDA_TESTS

    for node in CUDA_TESTS:
        path, name = node.split("::")
        source = (REPOSITORY / path).read_text(encoding="utf-8")
        assert f"def {name}(" in source and "torch.cuda.is_available()" in source, node


def test_started_checks_report_success_failure_and_a_stop():
    import time

    from benchmarks.gpu_check import finish_cuda_tests, finish_extension_check

    def start(code: str):
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return {"process": process, "started": time.monotonic()}

    assert finish_extension_check(start("print('ran')"), 60)["detail"] == "ran"
    assert finish_extension_check(start("import sys; sys.exit('broken')"), 60)["detail"] == "exit status 1: broken"
    stopped = finish_extension_check(start("import time; time.sleep(60)"), 0.5)
    assert not stopped["usable"] and stopped["detail"].endswith("stopped")
    assert finish_cuda_tests(start("print('3 passed')"), 60)["summary"] == "3 passed"
    assert finish_cuda_tests(start("import time; time.sleep(60)"), 0.5)["passed"] is False


def test_the_training_sections_share_one_written_scene(tmp_path, monkeypatch):
    import argparse

    from benchmarks import gpu_check

    written = []
    monkeypatch.setattr(gpu_check, "write_benchmark_scene", lambda name, root, *rest: written.append(root) or root)
    check = gpu_check.CheckScene(argparse.Namespace(profile="cpu", views=3, workdir=tmp_path))
    assert check.profile.num_views == 3 and check.seconds is None
    assert check.path() == check.path() == tmp_path / "scene"
    assert written == [tmp_path / "scene"] and check.seconds >= 0
