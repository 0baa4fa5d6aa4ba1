"""End to end: ``ns-train ovs3d-splat`` on the tiny scene, then every surface a user has for it.

The shared tiny splat run (tests/tiny_splat_run.py) trains through the real CLI. Resuming runs
``ns-train`` again; ``ns-eval``, ``ns-render``, ``ovs3d-export`` and ``ns-export gaussian-splat``
run in this process through their entry points (a fresh ``ns-*`` process spends 30-45 s
importing nerfstudio on the project's 2-core machine); the viewer is nerfstudio's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.scripts import eval as ns_eval
from nerfstudio.scripts import render
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.viewer.viewer import Viewer

from ovs3d_nerfstudio import export
from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.export import read_ply
from ovs3d_nerfstudio.legend_image import colours_to_uint8
from ovs3d_nerfstudio.palette import palette
from ovs3d_nerfstudio.splat.model import GEOMETRY_GROUPS, Ovs3dSplatModel
from ovs3d_nerfstudio.vlg.cli import Prepare
from ovs3d_nerfstudio.vlg.sources import field_depth, load_run
from ovs3d_nerfstudio.vlg.views import load_views
from test_viewer import free_port, wait_for
from tiny_run import run_cli
from tiny_splat_run import NUM_GAUSSIANS, RECONSTRUCTION, STEPS, ns_command, tiny_splat_train_args

CHECKPOINTS = (3, 6, 9, 12, 15, 18)
"""Saved steps: 9 before the first densification (step 10), 12 after it and the first frozen step,
15 the last frozen step, 18 the last joint step."""


@pytest.fixture(scope="module")
def run(tiny_splat_run) -> Path:
    return tiny_splat_run[0]


@pytest.fixture(scope="module")
def scene(run: Path) -> Path:
    return run.parents[3] / "scene"


@pytest.fixture(scope="module")
def labels(scene: Path) -> List[str]:
    return (scene / "segmentations" / "classes.txt").read_text().splitlines()


@pytest.fixture
def run_entrypoint(monkeypatch):
    def run(name: str, entrypoint, *args) -> None:
        monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
        entrypoint()

    return run


def state(run: Path, step: int) -> dict:
    return torch.load(run / "nerfstudio_models" / f"step-{step:09d}.ckpt", map_location="cpu", weights_only=True)["pipeline"]


def gaussians(checkpoint: dict, name: str) -> torch.Tensor:
    return checkpoint[f"_model.gauss_params.{name}"]


def test_training_logs_every_phase_and_saves_checkpoints(tiny_splat_run):
    run, stdout = tiny_splat_run
    assert sorted(path.name for path in (run / "nerfstudio_models").glob("*.ckpt")) == [
        f"step-{step:09d}.ckpt" for step in CHECKPOINTS
    ]
    for step, phase in [(0, "reconstruction"), (RECONSTRUCTION, "segmentation-frozen"), (16, "segmentation-joint")]:
        assert f"step {step}: phase '{phase}'" in stdout


def test_densification_runs_in_reconstruction_only_and_each_phase_trains_its_groups(run: Path):
    before, first_frozen, last_frozen, last_joint = (state(run, step) for step in (9, 12, 15, 18))
    assert len(gaussians(before, "means")) == NUM_GAUSSIANS  # no refinement before step 10
    count = len(gaussians(first_frozen, "means"))
    assert count != NUM_GAUSSIANS  # step 10 grew and pruned
    for checkpoint in (last_frozen, last_joint):
        assert len(gaussians(checkpoint, "means")) == count  # no strategy in segmentation
    for name in GEOMETRY_GROUPS:
        assert torch.equal(gaussians(first_frozen, name), gaussians(last_joint, name)), name
    assert torch.equal(gaussians(first_frozen, "features_dc"), gaussians(last_frozen, "features_dc"))
    assert not torch.equal(gaussians(last_frozen, "features_dc"), gaussians(last_joint, "features_dc"))
    for name in ("clip_latent", "selection"):
        for a, b in ((first_frozen, last_frozen), (last_frozen, last_joint)):
            assert not torch.equal(gaussians(a, name), gaussians(b, name)), name
    head = [key for key in first_frozen if key.startswith("_model.clip_head.")]
    assert head and not all(torch.equal(first_frozen[key], last_frozen[key]) for key in head)


def test_resuming_lands_in_the_right_phase_and_trains_the_live_gaussians(run: Path, tmp_path: Path):
    """The checkpoint has another number of Gaussians than a fresh model: the load must resize
    the Parameters the optimizers hold, or the resumed steps would train dead copies."""
    root = run.parents[3]
    args = tiny_splat_train_args(root / "scene", tmp_path / "outputs", root / "cache")
    args[args.index("--max-num-iterations") + 1] = "3"
    checkpoint = run / "nerfstudio_models" / "step-000000015.ckpt"
    result = run_cli([ns_command("ns-train"), args[0], "--load-checkpoint", str(checkpoint), *args[1:]], tmp_path)
    assert "step 16: phase 'segmentation-joint'" in result.stdout
    assert "phase 'reconstruction'" not in result.stdout
    resumed = tmp_path / "outputs" / "tiny" / "ovs3d-splat" / "run"
    after, saved = state(resumed, 18), state(run, 15)
    assert len(gaussians(after, "means")) == len(gaussians(saved, "means"))
    assert not torch.equal(gaussians(after, "clip_latent"), gaussians(saved, "clip_latent"))
    assert torch.equal(gaussians(after, "means"), gaussians(saved, "means"))


def test_a_reconstruction_checkpoint_loads_with_its_own_number_of_gaussians(run: Path):
    """Loading a checkpoint taken in reconstruction (``--load-checkpoint``) keeps the model's own
    CLIP head where shapes differ, but every per-Gaussian tensor comes from the checkpoint."""
    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="inference")
    saved = state(run, 9)  # before densification: another number of Gaussians than the final model
    count = len(gaussians(saved, "means"))
    assert count != pipeline.model.num_points
    pipeline.load_pipeline({**saved, "_model.gauss_params.clip_latent": torch.ones(count, 8)}, step=5)
    assert {len(param) for param in pipeline.model.gauss_params.values()} == {count}
    assert torch.equal(pipeline.model.gauss_params["clip_latent"].data, torch.ones(count, 8))


def test_reload_needs_no_teacher_and_renders_palette_labels(run: Path, labels):
    _, pipeline, _, step = eval_setup(run / "config.yml", test_mode="test")
    assert step == STEPS - 1
    assert not pipeline.teachers.clip_is_built  # text features come from the checkpoint
    model = pipeline.model
    assert isinstance(model, Ovs3dSplatModel) and model.labels == labels
    assert model.num_points == len(gaussians(state(run, STEPS - 1), "means"))
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    outputs = model.get_outputs_for_camera(camera)
    height, width = int(camera.height), int(camera.width)
    assert next(iter(outputs)) == "labels"
    assert outputs["class_probabilities"].shape == (height, width, len(labels))
    torch.testing.assert_close(outputs["class_probabilities"].sum(-1), torch.ones(height, width))
    torch.testing.assert_close(outputs["labels"], model.label_colours[outputs["class_probabilities"].argmax(-1)])
    assert outputs["labels_overlay"].shape == (height, width, 3)


def test_training_batches_never_pin_memory(run: Path, monkeypatch):
    """splatfacto's image cache calls ``pin_memory()``, which raises without CUDA."""

    def refuse(*args, **kwargs):
        raise AssertionError("pin_memory called")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="val")
    pipeline.train()
    for step in (0, RECONSTRUCTION, STEPS - 1):
        pipeline.model.enter_step(step)
        camera, batch = pipeline.datamanager.next_train(step)
        assert camera.shape == (1,) and batch["image"].shape == (int(camera.height), int(camera.width), 3)
        if step >= RECONSTRUCTION:
            assert batch["pixels"].shape == (64, 2) and batch["clip_targets"].shape[:2] == (64, 3)
            assert batch["patch_cameras"].shape == (2,) and int(batch["patch_cameras"].width[0]) == 4
            assert batch["dino_tokens"].shape[:2] == (2, 4)
    loss_dict = pipeline.get_train_loss_dict(STEPS - 1)[1]
    assert {"clip", "rda", "fda_pos", "fda_neg", "main_loss"} <= set(loss_dict)


def test_ns_eval_reports_both_metric_protocols(run: Path, labels, run_entrypoint, tmp_path: Path):
    metrics_path, images = tmp_path / "metrics.json", tmp_path / "images"
    run_entrypoint(
        "ns-eval", ns_eval.entrypoint, "--load-config", run / "config.yml", "--output-path", metrics_path,
        "--render-output-path", images,
    )  # fmt: skip
    results = json.loads(metrics_path.read_text())["results"]
    assert 0.0 <= results["miou"] <= 1.0 and 0.0 <= results["accuracy"] <= 1.0 and results["psnr"] > 0.0
    assert "lpips" not in results
    class_ious = {key: value for key, value in results.items() if key.startswith("iou/")}
    assert class_ious and all(0.0 <= value <= 1.0 for value in class_ious.values())
    paper_ious = [value for key, value in results.items() if key.startswith("iou_paper/") and not key.endswith("_std")]
    assert len(paper_ious) == len(labels)
    assert abs(results["miou_paper"] - sum(paper_ious) / len(paper_ious)) < 1e-6
    assert len(list(images.glob("eval_labels_0*.png"))) == 2
    assert len(list(images.glob("eval_labels_overlay_*.png"))) == 2


def test_ns_render_writes_palette_label_images(run: Path, scene: Path, labels, run_entrypoint, tmp_path: Path):
    run_entrypoint(
        "ns-render", render.entrypoint, "dataset", "--load-config", run / "config.yml", "--split", "test",
        "--rendered-output-names", "labels", "--output-path", tmp_path, "--image-format", "png",
    )  # fmt: skip
    test_images = Ovs3dDataParserConfig(data=scene).setup().get_dataparser_outputs("test").image_filenames
    written = sorted((tmp_path / "test" / "labels").glob("*.png"))
    assert [path.stem for path in written] == sorted(path.stem for path in test_images)
    colours = {tuple(colour) for colour in colours_to_uint8(palette(len(labels))).tolist()}
    for path in written:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert pixels.shape[:2] == (48, 64)
        assert {tuple(pixel) for pixel in pixels.reshape(-1, 3).tolist()} <= colours


@pytest.fixture(scope="module")
def viewer_pipeline(run: Path, tmp_path_factory):
    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="test")
    log = tmp_path_factory.mktemp("splat_viewer") / "viewer_log.txt"
    viewer = Viewer(ViewerConfig(websocket_port=free_port()), log, run.parents[3] / "scene", pipeline)
    yield pipeline
    viewer.viser_server.stop()


def render_view(pipeline) -> dict:
    return pipeline.model.get_outputs_for_camera(pipeline.datamanager.eval_dataset.cameras[0:1])


def test_viewer_shows_labels_first_with_legend_and_edits_labels(viewer_pipeline):
    model, panel = viewer_pipeline.model, viewer_pipeline.segmentation_panel
    outputs = render_view(viewer_pipeline)
    assert next(iter(outputs)) == "labels" and "labels_overlay" in outputs
    assert panel._legend_handle is not None and "data:image/png;base64," in panel._legend_handle.content
    before = outputs["class_probabilities"].argmax(-1)
    reversed_labels = list(reversed(model.labels))
    panel.labels.gui_handle.value = "; ".join(reversed_labels)
    wait_for(lambda: model.display_labels == reversed_labels)
    # Re-scoring needs the CLIP teacher for the new text; the same text in reverse order keeps
    # every pixel's label under the mirrored index.
    after = render_view(viewer_pipeline)["class_probabilities"].argmax(-1)
    torch.testing.assert_close(after, len(reversed_labels) - 1 - before)
    panel.labels.gui_handle.value = "; ".join(model.labels)
    wait_for(lambda: model.display_labels == model.labels)


def test_viewer_free_query_and_click_readout(viewer_pipeline):
    model, panel = viewer_pipeline.model, viewer_pipeline.segmentation_panel
    panel.query.gui_handle.value = "a shiny red fruit"
    wait_for(lambda: model._query is not None)
    relevancy = render_view(viewer_pipeline)["query_relevancy"]
    assert relevancy.shape == (48, 64, 1) and 0.0 <= float(relevancy.min()) and float(relevancy.max()) <= 1.0
    panel.query.gui_handle.value = ""
    wait_for(lambda: model._query is None)
    camera = viewer_pipeline.datamanager.eval_dataset.cameras[0:1]
    ray = camera.generate_rays(camera_indices=0, coords=torch.tensor([[24.5, 32.5]]))
    entries = panel.describe_ray(ray.origins[0].tolist(), ray.directions[0].tolist()).split(", ")
    assert len(entries) == 3 and all(entry.split()[-1].endswith("%") for entry in entries)
    top = render_view(viewer_pipeline)["class_probabilities"][24, 32].argmax()
    assert entries[0].rsplit(" ", 1)[0] == model.display_labels[int(top)]


def test_ovs3d_export_writes_labelled_gaussians_and_points(run: Path, labels, run_entrypoint, tmp_path: Path):
    run_entrypoint("ovs3d-export", export.entrypoint, "--load-config", run / "config.yml", "--output-dir", tmp_path,
                   "--num-points", 50, "--opacity-threshold", 0.05)  # fmt: skip
    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="inference")
    model = pipeline.model
    expected_labels = model.gaussian_labels().numpy()
    palette_bytes = colours_to_uint8(palette(len(labels)))
    for name in ("splat_labels.ply", "splat_rgb.ply"):
        splats = read_ply(tmp_path / name)
        names = splats.dtype.names
        assert names[:6] == ("x", "y", "z", "nx", "ny", "nz") and names[-1] == "label"
        assert {"f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_2", "rot_0", "rot_3"} <= set(names)
        assert len(splats) == model.num_points
        np.testing.assert_array_equal(splats["label"], expected_labels)
        np.testing.assert_allclose(splats["x"], model.means[:, 0].detach().numpy())
        np.testing.assert_allclose(splats["opacity"], model.opacities[:, 0].detach().numpy())
    shown = 0.5 + 0.28209479177387814 * np.stack([read_ply(tmp_path / "splat_labels.ply")[f"f_dc_{i}"] for i in range(3)], -1)
    np.testing.assert_allclose(shown, palette(len(labels))[expected_labels].numpy(), atol=1e-5)
    points = read_ply(tmp_path / "point_cloud.ply")
    assert 0 < len(points) <= 50
    colours = np.stack([points["red"], points["green"], points["blue"]], axis=-1)
    np.testing.assert_array_equal(colours, palette_bytes[points["label"]])
    assert (tmp_path / "labels.txt").read_text(encoding="utf-8").splitlines() == labels


def test_the_point_cloud_path_prepares_from_the_gaussians(run: Path, tmp_path: Path):
    """ovs3d-vlg prepare --run on a splat run: its opaque Gaussians are the points, with their
    colours; its rendered expected depth (already along the optical axis) is the occlusion depth."""
    trained = load_run(run / "config.yml")
    model = trained.pipeline.model
    scene = Prepare(work=tmp_path, run=run / "config.yml", num_points=40, surface_opacity=0.05).prepare()
    assert scene.info["depth"] == "field" and len(scene.xyz) == 40
    with pytest.raises(UserFacingError, match="no Gaussian has opacity above 0.999: lower --surface-opacity"):
        Prepare(work=tmp_path / "none", run=run / "config.yml", surface_opacity=0.999).prepare()
    with pytest.raises(UserFacingError, match=r"--surface-opacity must be in \[0, 1\); got 1.5"):
        Prepare(work=tmp_path / "none", run=run / "config.yml", surface_opacity=1.5).prepare()
    opacity = torch.sigmoid(model.gauss_params["opacities"].detach()[:, 0])
    means = model.gauss_params["means"].detach().double()
    nearest = torch.cdist(torch.from_numpy(scene.xyz), means).min(dim=1)
    assert nearest.values.max() < 1e-5 and bool((opacity[nearest.indices] > 0.05).all())
    colours = torch.sigmoid(model.gauss_params["features_dc"].detach()[nearest.indices]).numpy()
    np.testing.assert_allclose(scene.colours, colours, atol=1e-6)
    # 18 steps leave many random Gaussians floating: about half pass the occlusion test (0.47).
    assert float(scene.covered.float().mean()) > 0.25
    views = load_views(trained.data, parser=trained.dataparser)
    camera = trained.pipeline.datamanager.train_dataparser_outputs.cameras[0:1]
    camera.rescale_output_resolution(1.0 / trained.ray_downscale)
    rendered = model.get_outputs_for_camera(camera)["depth"][..., 0].double()
    torch.testing.assert_close(field_depth(trained, views, trained.ray_downscale)(0), rendered)


def test_ns_export_gaussian_splat_recognises_the_model(run: Path, run_entrypoint, tmp_path: Path):
    try:  # nerfstudio's exporter imports open3d, which needs system libraries (libusb) at import
        from nerfstudio.scripts import exporter
    except ImportError as error:
        pytest.skip(f"nerfstudio's exporter cannot be imported here: {error}")
    run_entrypoint("ns-export", exporter.entrypoint, "gaussian-splat", "--load-config", run / "config.yml",
                   "--output-dir", tmp_path)  # fmt: skip
    header = (tmp_path / "splat.ply").read_bytes().split(b"end_header")[0].decode("ascii")
    assert "property float f_dc_0" in header and "property float rot_3" in header
    count = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element vertex")))
    assert count == len(gaussians(state(run, STEPS - 1), "means"))


def test_ns_train_help_lists_the_splat_options(tmp_path: Path):
    result = run_cli([ns_command("ns-train"), "ovs3d-splat", "--help"], tmp_path)
    for flag in (
        "--pipeline.model.latent-dim",
        "--pipeline.model.use-rda",
        "--pipeline.model.variant",
        "--pipeline.model.schedule.means-lr",
        "--pipeline.model.refine-every",
        "--pipeline.datamanager.initial-points-seed",
        "--pipeline.datamanager.ray-downscale",
    ):
        assert flag in result.stdout, flag
    assert "--pipeline.model.schedule.reconstruction-lr " not in result.stdout  # NeRF-only rate, hidden
