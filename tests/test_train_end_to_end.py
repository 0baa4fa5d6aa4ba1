"""End to end: ``ns-train ovs3d`` on a generated scene, then reload it and ``ns-eval`` it.

The shared tiny run (tests/tiny_run.py) trains through the real CLI; these tests check
its checkpoints, phases, reload, resume and evaluation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovs3d_nerfstudio.data.procedural import write_scene
from tiny_scene import tiny_scene_spec
from tiny_run import STEPS, run_cli, tiny_train_args


@pytest.fixture(scope="module")
def trained_run(tiny_run) -> Path:
    return tiny_run[0]


def load_state(run: Path, step: int) -> dict:
    checkpoint = torch.load(run / "nerfstudio_models" / f"step-{step:09d}.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["pipeline"]


def group_state(state: dict, prefix: str) -> list:
    return [value for key, value in sorted(state.items()) if key.startswith(f"_model.{prefix}")]


def test_training_writes_checkpoints_and_logs_phases(tiny_run):
    run, stdout = tiny_run
    checkpoints = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    assert [c.name for c in checkpoints] == [f"step-{step:09d}.ckpt" for step in (3, 6, 9)]
    assert (run / "config.yml").is_file()
    for step, phase in [(0, "reconstruction"), (3, "segmentation-frozen"), (7, "segmentation-joint")]:
        assert f"step {step}: phase '{phase}'" in stdout


def test_each_phase_trains_only_its_groups(trained_run: Path):
    first_frozen, last_frozen, last_joint = (load_state(trained_run, step) for step in (3, 6, 9))

    def same(a: dict, b: dict, prefix: str) -> bool:
        tensors_a, tensors_b = group_state(a, prefix), group_state(b, prefix)
        assert tensors_a, f"no parameters under {prefix}"
        return all(torch.equal(x, y) for x, y in zip(tensors_a, tensors_b))

    # Segmentation phase 1: density and appearance frozen; selection and CLIP head trained.
    for frozen in ("field.density_volume", "field.appearance_volume", "field.rgb_head", "proposal_networks"):
        assert same(first_frozen, last_frozen, frozen), frozen
    for trained in ("field.selection_volume", "clip_head"):
        assert not same(first_frozen, last_frozen, trained), trained
    # Phase 2: appearance and RGB head unfrozen; density stays frozen.
    for trained in ("field.appearance_volume", "field.rgb_head", "field.selection_volume", "clip_head"):
        assert not same(last_frozen, last_joint, trained), trained
    for frozen in ("field.density_volume", "proposal_networks"):
        assert same(last_frozen, last_joint, frozen), frozen


def test_resuming_lands_in_the_right_phase(trained_run: Path, tmp_path: Path):
    root = trained_run.parents[3]
    args = tiny_train_args(root / "scene", tmp_path / "outputs", root / "cache")
    args[args.index("--max-num-iterations") + 1] = str(STEPS + 1)
    checkpoint = trained_run / "nerfstudio_models" / "step-000000006.ckpt"
    ns_train = Path(sys.executable).with_name("ns-train")
    result = run_cli([str(ns_train), *args[:1], "--load-checkpoint", str(checkpoint), *args[1:]], tmp_path)
    assert "step 7: phase 'segmentation-joint'" in result.stdout
    assert "phase 'reconstruction'" not in result.stdout


def test_checkpoint_reloads_and_renders_labels(trained_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(trained_run / "config.yml", test_mode="test")
    assert step == STEPS - 1
    # Text features come from the checkpoint: reloading needs no CLIP teacher (or weights).
    assert not pipeline.teachers.clip_is_built
    model = pipeline.model
    classes = trained_run.parents[3] / "scene" / "segmentations" / "classes.txt"
    assert model.labels == classes.read_text().split("\n")[:-1]
    camera = pipeline.datamanager.eval_dataset.cameras[0:1].to(model.device)
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(camera)
    height, width = int(camera.height), int(camera.width)
    num_labels = len(model.labels)
    assert outputs["rgb"].shape == (height, width, 3) and outputs["rgb"].dtype == torch.float32
    assert outputs["depth"].shape == (height, width, 1)
    assert outputs["accumulation"].shape == (height, width, 1)
    assert outputs["labels"].shape == (height, width, 3) and outputs["labels"].dtype == torch.float32
    assert outputs["class_probabilities"].shape == (height, width, num_labels)
    assert 0.0 <= float(outputs["rgb"].min()) and float(outputs["rgb"].max()) <= 1.0
    torch.testing.assert_close(outputs["class_probabilities"].sum(-1), torch.ones(height, width))
    # Every label pixel is exactly one palette colour: the argmax's.
    expected = model.label_colours[outputs["class_probabilities"].argmax(-1)]
    torch.testing.assert_close(outputs["labels"], expected)


def test_ns_eval_reports_segmentation_metrics(trained_run: Path, tmp_path: Path):
    ns_eval = Path(sys.executable).with_name("ns-eval")
    metrics_path, images = tmp_path / "metrics.json", tmp_path / "images"
    config = str(trained_run / "config.yml")
    run_cli([str(ns_eval), "--load-config", config, "--output-path", str(metrics_path), "--render-output-path", str(images)], tmp_path)
    results = json.loads(metrics_path.read_text())["results"]
    assert 0.0 <= results["miou"] <= 1.0
    assert 0.0 <= results["accuracy"] <= 1.0
    assert results["psnr"] > 0.0
    class_ious = {key: value for key, value in results.items() if key.startswith("iou/")}
    assert class_ious and all(0.0 <= value <= 1.0 for value in class_ious.values())
    assert not any(key.startswith(("intersection/", "union/")) for key in results)
    # The paper's protocol beside it: every label has a per-view IoU in every view, so the mean
    # over views of the per-view mean equals the mean over labels of the per-label means.
    paper_ious = [value for key, value in results.items() if key.startswith("iou_paper/") and not key.endswith("_std")]
    assert len(paper_ious) == len((trained_run.parents[3] / "scene" / "segmentations" / "classes.txt").read_text().splitlines())
    assert abs(results["miou_paper"] - sum(paper_ious) / len(paper_ious)) < 1e-6
    assert 0.0 <= results["accuracy_paper"] <= results["accuracy"] + 1e-9  # uncovered pixels count as wrong
    # Two views have masks: their predicted label maps and overlays are written.
    assert len(list(images.glob("eval_labels_0*.png"))) == 2
    assert len(list(images.glob("eval_labels_overlay_*.png"))) == 2


def test_bad_scene_gives_one_clear_message_not_a_traceback(tmp_path: Path):
    scene = write_scene(tiny_scene_spec(seed=0), tmp_path / "scene", mask_views=[0])
    (scene / "segmentations" / "classes.txt").unlink()
    ns_train = Path(sys.executable).with_name("ns-train")
    args = tiny_train_args(scene, tmp_path / "outputs", tmp_path / "cache")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([str(ns_train), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "ovs3d: error:" in result.stderr and "classes.txt" in result.stderr
