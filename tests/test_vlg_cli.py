"""``ovs3d-vlg``: every stage on a tiny procedural scene through the command line (in process,
as the installed entry point parses it), its outputs, and its one-line errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from ovs3d_nerfstudio.errors import UserFacingError, print_user_errors
from ovs3d_nerfstudio.vlg.cli import Commands, entrypoint
from ovs3d_nerfstudio.vlg.ply import read_ply, write_ply
from ovs3d_nerfstudio.vlg.prepare import PreparedScene

SYNTHETIC_CLIP = "ovs3d_nerfstudio.synthetic.teachers:synthetic_clip"


def _prepare_flags(work: Path, cache: Path, name: str = "lawn") -> list:
    """A 48x36 fruit_lawn, 16x12 features, few points: seconds per stage."""
    return [
        "--work", str(work), "--procedural", "fruit_lawn", "--name", name, "--image-size", "48", "36",
        "--rays-per-pixel", "0.2", "--clip.source", SYNTHETIC_CLIP, "--pyramid.patch-fractions", "0.5", "0.34", "0.25",
        "--ray-downscale", "3", "--cache-dir", str(cache),
    ]  # fmt: skip


TINY_TRAINING = ["--ess.epochs", "4", "--esg.epochs", "3", "--esg.width-divisor", "8", "--tta", "2"]


def cli(*args):
    return tyro.cli(Commands, args=[str(a) for a in args]).main()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("vlg")
    cli("run", *_prepare_flags(work, work / "cache"), *TINY_TRAINING, "--embeddings")
    return work


def test_run_writes_the_labelled_points_legend_and_metrics(trained: Path):
    folder = trained / "predictions" / "lawn"
    scene = PreparedScene.load(trained / "scenes" / "lawn.pt")
    assert scene.info["views_computed"] == 24 and scene.info["depth"] == "exact"
    cloud = read_ply(folder / "points.ply")
    assert len(cloud) == len(scene.xyz) > 1000
    np.testing.assert_allclose(cloud.xyz, scene.xyz, atol=1e-5)
    np.testing.assert_allclose(cloud.colours, scene.colours, atol=1 / 255)
    vocabulary = (folder / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert vocabulary == scene.vocabulary and len(vocabulary) >= 5
    assert cloud.labels.min() >= 0 and cloud.labels.max() < len(vocabulary)
    header = (folder / "points.ply").read_bytes()[:400].decode("ascii", errors="replace")
    for prop in ("property int label", "property float confidence", "property int pseudo_label", "property int coverage"):
        assert prop in header
    assert (folder / "legend.png").stat().st_size > 0
    embeddings = np.load(folder / "embeddings.npy")
    assert embeddings.shape == (len(scene.xyz), scene.text_features.shape[1]) and embeddings.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["points"]) == {"esgs", "pseudo_labels", "fusion_unmasked", "ess"}
    assert set(metrics["views_2d"]) == {"esgs", "pseudo_labels", "fusion_unmasked", "ess", "teacher", "teacher_masked"}
    for rows in (metrics["points"], metrics["views_2d"]):
        for row in rows.values():
            assert all(0.0 <= value <= 1.0 for value in row.values())
    # The synthetic teacher's pseudo labels are far better than chance on this scene.
    assert metrics["points"]["pseudo_labels"]["accuracy"] > 0.5
    assert metrics["prediction"] == {"masked": False, "tta": 2, "voxel_size": pytest.approx(metrics["prediction"]["voxel_size"])}
    assert 0.9 < metrics["coverage"] <= 1.0
    # The run's options reached the network: distilled from the adapter, 3 steps, 1/8 widths.
    network = torch.load(trained / "esgs.pt", weights_only=False)
    assert network["targets"] == "adapter" and len(network["history"]) == 3
    assert network["spec"]["planes"] == (4, 8, 16, 32, 16, 16, 12, 12) and network["spec"]["stem_channels"] == 4
    assert len(torch.load(trained / "adapter.pt", weights_only=False)["history"]) == 4


def test_stages_reuse_the_cache_refuse_overwrites_and_evaluate(trained: Path):
    # Prepared again under another name: every feature comes from the cache.
    scene = cli("prepare", *_prepare_flags(trained, trained / "cache", name="lawn2"))
    assert scene.info["views_computed"] == 0
    with pytest.raises(UserFacingError, match="already holds a prediction"):
        cli("predict", "--work", trained, "--scene", "lawn")
    masked = cli("predict", "--work", trained, "--scene", "lawn", "--mask-scene-labels", "--tta", "1", "--overwrite")
    assert masked["prediction"]["masked"] is True
    evaluated = cli("evaluate", "--work", trained, "--scene", "lawn")
    assert evaluated["points"]["esgs"] == pytest.approx(masked["points"]["esgs"])
    # Two scenes need one voxel size in common units.
    with pytest.raises(UserFacingError, match="automatic voxel size is per scene"):
        cli("esg", "--work", trained, "--options.epochs", "1")


def test_one_line_errors(tmp_path: Path, trained: Path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("red apple\nblack cat\n", encoding="utf-8")
    with pytest.raises(UserFacingError, match="the vocabulary lacks"):
        cli("prepare", *_prepare_flags(tmp_path, trained / "cache"), "--vocabulary", vocabulary)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"not a point cloud")
    with pytest.raises(UserFacingError, match="cannot read point cloud .*junk.ply"):
        cli("prepare", *_prepare_flags(tmp_path, trained / "cache"), "--points", junk)
    with pytest.raises(UserFacingError, match="no prepared scene"):
        cli("ess", "--work", tmp_path / "empty")
    alone = tmp_path / "alone"
    (alone / "scenes").mkdir(parents=True)
    shutil.copy(trained / "scenes" / "lawn.pt", alone / "scenes" / "lawn.pt")
    with pytest.raises(UserFacingError, match="no adapter.pt in .*run 'ovs3d-vlg ess"):
        cli("esg", "--work", alone)
    with pytest.raises(UserFacingError, match="ESS setting: class-balance must be >= 0"):
        cli("ess", "--work", alone, "--config.class-balance", "-1")
    with pytest.raises(UserFacingError, match="ESS setting: batches-per-epoch must be >= 1; got 0"):
        cli("ess", "--work", alone, "--config.batches-per-epoch", "0")
    assert not (alone / "adapter.pt").exists()
    with pytest.raises(UserFacingError, match="no esgs.pt in .*run 'ovs3d-vlg esg"):
        cli("predict", "--work", alone, "--scene", "lawn")
    with pytest.raises(UserFacingError, match="give the scene"):
        cli("prepare", "--work", alone)
    with pytest.raises(UserFacingError, match="without a point cloud: give --points"):
        cli("prepare", "--work", alone, "--data", trained / "data" / "lawn")
    with pytest.raises(UserFacingError, match="'gpu' is not a device"):
        cli("predict", "--work", trained, "--scene", "lawn", "--device", "gpu", "--output", tmp_path / "gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserFacingError, match="asks for CUDA, which this machine lacks"):
            cli("esg", "--work", trained, "--options.device", "cuda", "--network", tmp_path / "cuda.pt")
    assert not (tmp_path / "cuda.pt").exists()
    with pytest.raises(UserFacingError, match="--class-weight must be >= 0"):
        cli("esg", "--work", trained, "--options.class-weight", "-1", "--network", tmp_path / "negative.pt")
    assert not (tmp_path / "negative.pt").exists()


def test_missing_run_is_one_line_from_the_entry_point(tmp_path: Path, monkeypatch, capsys):
    """The installed entry point parses sys.argv; its excepthook prints a user error as one line."""
    missing = tmp_path / "nope.yml"
    monkeypatch.setattr(sys, "argv", ["ovs3d-vlg", "prepare", "--work", str(tmp_path), "--run", str(missing)])
    with pytest.raises(UserFacingError) as caught:
        entrypoint()
    assert sys.excepthook is print_user_errors
    print_user_errors(type(caught.value), caught.value, caught.value.__traceback__)
    printed = capsys.readouterr().err.splitlines()
    assert printed == [f"ovs3d: error: no trained run at {missing}: pass the config.yml of an 'ns-train ovs3d' or 'ns-train ovs3d-splat' run"]


def test_label_any_ply_from_its_points_alone(trained: Path, tmp_path: Path):
    scene = PreparedScene.load(trained / "scenes" / "lawn.pt")
    cloud = tmp_path / "cloud.ply"
    write_ply(cloud, scene.xyz[:500], scene.colours[:500], binary=False)
    metrics = cli(
        "label", "--work", trained, "--points", cloud, "--output", tmp_path / "out", "--up", *scene.up,
        "--labels", scene.vocabulary[0], scene.vocabulary[1], "--tta", "1",
    )  # fmt: skip
    labelled = read_ply(tmp_path / "out" / "points.ply")
    assert len(labelled) == 500 and set(np.unique(labelled.labels)) <= {0, 1}
    assert sum(metrics["points_per_label"].values()) == 500 and metrics["prediction"]["masked"]
    with pytest.raises(UserFacingError, match="lacks 'black cat' .* the network knows red apple"):
        cli("label", "--work", trained, "--points", cloud, "--output", tmp_path / "other", "--labels", "black cat")
