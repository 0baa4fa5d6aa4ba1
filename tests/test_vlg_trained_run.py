"""The point-cloud path on a trained ``ovs3d`` run: its surface points, its rendered depth for
the occlusion test, and its cached pixel features reused without a teacher call."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import torch
import tyro

from ovs3d_nerfstudio.vlg.cli import Commands
from ovs3d_nerfstudio.vlg.sources import field_depth, load_run
from ovs3d_nerfstudio.vlg.views import load_views


def test_prepare_from_a_trained_run_reuses_its_features(tiny_run, tmp_path: Path):
    config = tiny_run[0] / "config.yml"
    run = load_run(config)
    # ns-train cached the features of the views it gave CLIP features; only the others are computed.
    cached = len(list(Path(run.cache_dir).rglob("*.pt")))
    assert cached > 0
    scene = tyro.cli(
        Commands, args=["prepare", "--work", str(tmp_path), "--run", str(config), "--num-points", "1500"]
    ).main()
    assert scene.info["depth"] == "field"
    assert scene.info["views_computed"] == scene.info["views"] - cached
    assert len(list(Path(run.cache_dir).rglob("*.pt"))) == scene.info["views"]
    assert len(scene.xyz) == 1500 and np.isfinite(scene.xyz).all()
    assert 0.0 < float(scene.covered.float().mean()) <= 1.0
    # The points lie where the field renders its depth: most are seen by the views they come from.
    views = load_views(run.data, parser=run.dataparser)
    depth = field_depth(run, views, run.ray_downscale)(0)
    assert depth.shape == (24, 32) and torch.isfinite(depth).all() and (depth > 0).all()


def test_the_command_is_registered():
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ovs3d-vlg"] == "ovs3d_nerfstudio.vlg.cli:entrypoint"
