"""The synthetic benchmark runner in miniature: a tiny scene, a few steps, both baselines, three
``ovs3d`` rows and the two ``ovs3d-splat`` rows.

Checks the plumbing only (scene -> baseline -> shared reconstruction per method -> resumed
segmentation -> ns-eval metrics -> table and JSON), never which row scores higher: a few steps
on a 32x24 ray grid say nothing about quality.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from benchmarks.lab.methods import BASELINE, BASELINE_RDA, METHODS, SPLAT_METHODS
from benchmarks.lab.reports import format_table
from benchmarks.lab.runner import ResumeError, run_benchmark
from ovs3d_nerfstudio.synthetic.profiles import PROFILES, SYNTHETIC_CLIP, SYNTHETIC_DINO, Profile, cli_flags

from tiny_run import TINY_TRAINING, tiny_schedule
from tiny_splat_run import NUM_GAUSSIANS, TINY_SPLAT_TRAINING

RECONSTRUCTION, FROZEN, JOINT = 4, 2, 2
SPLAT_RECONSTRUCTION = 12
"""Long enough for the tiny splat settings to densify (first refinement at step 10, see
tests/tiny_splat_run.py), so the splat rows resume a checkpoint with another Gaussian count."""

TINY = Profile(
    name="tiny",
    description="test only",
    width=64,
    height=48,
    num_views=8,
    overrides={
        "pipeline.datamanager.clip.source": SYNTHETIC_CLIP,
        "pipeline.datamanager.dino.source": SYNTHETIC_DINO,
        **TINY_TRAINING,
        **tiny_schedule(RECONSTRUCTION, FROZEN, JOINT),
        "pipeline.datamanager.num_patches": 2,
        "pipeline.datamanager.patch_tokens": 2,
        "pipeline.datamanager.patch_downscale": 1,
        "pipeline.datamanager.patch_rays_per_token": 1,
    },
    splat_overrides={
        "pipeline.datamanager.clip.source": SYNTHETIC_CLIP,
        "pipeline.datamanager.dino.source": SYNTHETIC_DINO,
        **TINY_SPLAT_TRAINING,
        **tiny_schedule(SPLAT_RECONSTRUCTION, FROZEN, JOINT),
        "pipeline.datamanager.num_patches": 2,
        "pipeline.datamanager.patch_tokens": 2,
        "pipeline.datamanager.patch_downscale": 1,
        "pipeline.datamanager.patch_rays_per_token": 1,
    },
)

NERF_ROWS = ("full", "full_paper", "single_scale")
"""The full method, the paper variant (the row that switches a whole option set) and the
ablation whose selection head differs in shape from the shared reconstruction checkpoint's (the
one resume path that must tolerate a mismatch)."""
SPLAT_ROWS = ("splat_full", "splat_distill_only")
ROWS = (BASELINE, BASELINE_RDA, *NERF_ROWS, *SPLAT_ROWS)
"""Both 2D baselines, then the trained rows, in the runner's order."""


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("benchmark")
    out = workdir / "results.json"
    printed = []
    result = run_benchmark("fruit_lawn", TINY, ROWS, workdir, seed=0, out=out, echo=printed.append)
    return result, out, printed


def test_table_has_every_requested_row_with_finite_scores(miniature):
    result, _, printed = miniature
    assert list(result["rows"]) == list(ROWS)
    for name, row in result["rows"].items():
        for column in ("miou", "accuracy"):
            assert math.isfinite(row[column]) and 0.0 <= row[column] <= 1.0, (name, column, row[column])
        assert row["num_views"] == 5
        assert set(row["per_class_iou"]) == set(result["labels"])
        # Each view's mIoU (where a row loses one view, it shows here); their mean is the row's mIoU.
        assert len(row["per_view_miou"]) == 5
        assert sum(row["per_view_miou"]) / 5 == pytest.approx(row["miou"], abs=1e-6), name
    for name in NERF_ROWS + SPLAT_ROWS:
        assert math.isfinite(result["rows"][name]["psnr"])
    table = printed[-1]
    assert table.splitlines()[0].split() == ["method", "mIoU", "accuracy", "PSNR"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == list(ROWS)


def test_json_holds_the_same_results_and_the_commands(miniature):
    result, out, _ = miniature
    written = json.loads(out.read_text())
    assert written["rows"].keys() == result["rows"].keys()
    assert written["rows"]["full"]["miou"] == result["rows"]["full"]["miou"]
    assert written["commands"]["single_scale"].startswith("ns-train ovs3d ")
    assert "--pipeline.datamanager.pyramid.patch-fractions 0.142857" in written["commands"]["single_scale"]
    assert written["profile"]["name"] == "tiny"
    assert written["load_average_start"] and written["timings"]["total_seconds"] > 0


def test_a_resumed_file_gets_new_rows_from_its_recorded_reconstruction(miniature, tmp_path):
    result, out, _ = miniature
    earlier = json.loads(out.read_text())
    printed = []
    resumed_out = tmp_path / "resumed.json"
    workdir = Path(result["reconstruction"]["checkpoint"]).parents[5]
    resumed = run_benchmark("fruit_lawn", TINY, ("no_fda",), workdir, seed=0, out=resumed_out, echo=printed.append, resume=earlier)
    assert any("reusing" in line for line in printed) and not any("shared by its rows" in line for line in printed)
    assert resumed["reconstruction"] == earlier["reconstruction"]  # not trained again
    assert resumed["rows"]["no_fda"]["loss_curve"][0]["step"] == RECONSTRUCTION
    assert "fda_pos" not in resumed["rows"]["no_fda"]["loss_curve"][-1]
    for name, row in earlier["rows"].items():
        assert json.loads(resumed_out.read_text())["rows"][name] == row  # earlier rows kept as they were
    assert resumed["resumed"][-1]["rows"] == ["no_fda"]
    with pytest.raises(ResumeError, match="seed 0, not 1"):
        run_benchmark("fruit_lawn", TINY, ("no_fda",), workdir, seed=1, resume=earlier)
    with pytest.raises(ResumeError, match="not a results file"):
        run_benchmark("fruit_lawn", TINY, ("no_fda",), workdir, seed=0, resume=[earlier])
    with pytest.raises(ResumeError, match="'width'"):
        run_benchmark("fruit_lawn", dataclasses.replace(TINY, width=80), ("no_fda",), workdir, seed=0, resume=earlier)


def test_trained_rows_resume_from_the_shared_reconstruction(miniature):
    result, _, _ = miniature
    assert result["reconstruction"]["loss_curve"][0]["phase"] == "reconstruction"
    for name in NERF_ROWS:
        curve = result["rows"][name]["loss_curve"]
        assert curve[0]["step"] == RECONSTRUCTION and curve[0]["phase"] == "segmentation-frozen"
        assert curve[-1]["phase"] == "segmentation-joint"
        assert "clip" in curve[0] and "rgb" not in curve[0]
        assert Path(result["rows"][name]["config"]).is_file()  # loadable by ns-eval


def test_splat_rows_resume_from_their_own_shared_reconstruction(miniature):
    result, _, _ = miniature
    reconstruction = result["splat_reconstruction"]
    assert "/runs/splat_reconstruction/ovs3d-splat/" in reconstruction["checkpoint"]
    assert reconstruction["checkpoint"] != result["reconstruction"]["checkpoint"]
    assert reconstruction["loss_curve"][0]["phase"] == "reconstruction" and "main_loss" in reconstruction["loss_curve"][0]
    assert reconstruction["phases"]["reconstruction"]["iterations"] == SPLAT_RECONSTRUCTION
    assert reconstruction["gaussians"] != NUM_GAUSSIANS  # densified: the rows resume another Gaussian count
    for name in SPLAT_ROWS:
        row = result["rows"][name]
        assert row["gaussians"] == reconstruction["gaussians"]  # geometry comes from the shared checkpoint, frozen
        curve = row["loss_curve"]
        assert curve[0]["step"] == SPLAT_RECONSTRUCTION and curve[0]["phase"] == "segmentation-frozen"
        assert "clip" in curve[0] and "main_loss" not in curve[0]
        assert curve[-1]["phase"] == "segmentation-joint" and "main_loss" in curve[-1]
        assert {phase: summary["iterations"] for phase, summary in row["phases"].items()} == {
            "segmentation-frozen": FROZEN,
            "segmentation-joint": JOINT,
        }
        assert "method_name: ovs3d-splat" in Path(row["config"]).read_text()  # loadable by ns-eval
        assert result["commands"][name].startswith("ns-train ovs3d-splat ")
        assert f"--pipeline.model.num-random {NUM_GAUSSIANS}" in result["commands"][name]


def test_splat_rows_switch_rda_and_fda_like_the_nerf_rows(miniature):
    result, _, _ = miniature
    full, distill = (result["rows"][name]["loss_curve"] for name in SPLAT_ROWS)
    assert "rda" in full[0] and any("fda_pos" in point for point in full)
    assert not any({"rda", "fda_pos", "fda_neg"} & set(point) for point in distill)
    assert "--pipeline.model.use-rda False --pipeline.model.use-fda False ovs3d-data --data" in result["commands"]["splat_distill_only"]


def test_splat_rows_have_learning_curves_memory_and_no_diagnostics(miniature):
    result, _, _ = miniature
    for name in SPLAT_ROWS:
        row = result["rows"][name]
        steps = [step for step, _ in row["miou_curve"]]
        assert steps[0] == 0 and steps[-1] == FROZEN + JOINT - 1
        assert all(0.0 <= value <= 1.0 for _, value in row["miou_curve"])
        assert row["diagnostics"] is None and "NeRF" in row["diagnostics_skipped"]
        assert row["peak_memory"]["device_gib"] is None  # CPU run
        assert 0.0 < row["peak_memory"]["host_rss_gib"] < 64.0


def test_splat_rows_need_the_profiles_splat_settings(tmp_path):
    bare = dataclasses.replace(TINY, splat_overrides={})
    with pytest.raises(ValueError, match="profile 'tiny' has no ovs3d-splat settings"):
        run_benchmark("fruit_lawn", bare, (BASELINE, "splat_full"), tmp_path, echo=lambda line: None)
    assert not (tmp_path / "scene").exists()  # refused before writing or training anything


def test_peak_memory_is_measured_from_the_start_of_each_stage():
    from benchmarks.lab.training import PeakMemory

    stage = PeakMemory("cpu")
    if not stage.host_reset:
        pytest.skip("the peak resident set cannot be reset here (no /proc/self/clear_refs)")
    block = bytearray(256 * 2**20)
    block[:: 2**12] = b"\x01" * len(range(0, len(block), 2**12))  # touch every page
    high = stage.read()["host_rss_gib"]
    del block
    low = PeakMemory("cpu").read()["host_rss_gib"]
    assert high - low > 0.2  # the second stage's peak does not include the first's 256 MiB
    assert stage.read()["device_gib"] is None


def test_method_flags_are_the_ablation_flags_of_the_cli():
    assert cli_flags(METHODS["no_rda"]) == ["--pipeline.model.use-rda", "False"]
    assert cli_flags(METHODS["no_fda"]) == ["--pipeline.model.use-fda", "False"]
    assert cli_flags(METHODS["no_rebalance"]) == ["--pipeline.model.fda-rebalance", "False"]
    assert cli_flags(METHODS["single_scale"]) == ["--pipeline.datamanager.pyramid.patch-fractions", "0.142857"]
    assert cli_flags(METHODS["views_10pct"]) == ["--pipeline.datamanager.clip-view-fraction", "0.1"]
    assert cli_flags(METHODS["full"]) == []
    assert cli_flags(METHODS["distill_only"]) == ["--pipeline.model.use-rda", "False", "--pipeline.model.use-fda", "False"]
    assert cli_flags(METHODS["full_official"]) == ["--pipeline.model.variant", "official"]
    assert cli_flags(METHODS["full_half_views"]) == ["--pipeline.datamanager.clip-view-fraction", "0.5"]
    assert cli_flags(SPLAT_METHODS["splat_full"]) == []
    assert cli_flags(SPLAT_METHODS["splat_distill_only"]) == cli_flags(METHODS["distill_only"])


def test_profile_flags_parse_with_ns_train(tmp_path):
    """Every profile's flags are valid ``ns-train ovs3d`` (and its splat flags ``ns-train
    ovs3d-splat``) flags and give the profile's values."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    from ovs3d_nerfstudio.splat.pipeline import Ovs3dSplatPipeline

    for profile in PROFILES.values():
        args = ["ovs3d", *cli_flags({**profile.overrides, **METHODS["single_scale"]}), "ovs3d-data", "--data", str(tmp_path)]
        config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
        assert config.pipeline.model.schedule.reconstruction_steps == profile.steps()[0]
        assert config.pipeline.datamanager.pyramid.patch_fractions == (0.142857,)
        assert config.pipeline.datamanager.clip.source == SYNTHETIC_CLIP
        args = ["ovs3d-splat", *cli_flags({**profile.splat_overrides, **SPLAT_METHODS["splat_distill_only"]}), "ovs3d-data", "--data", str(tmp_path)]
        config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
        assert config.method_name == "ovs3d-splat"
        assert config.pipeline.model.schedule.reconstruction_steps == profile.steps("ovs3d-splat")[0]
        assert config.pipeline.model.use_rda is False and config.pipeline.model.use_fda is False
        assert config.pipeline.datamanager.ray_downscale == profile.overrides["pipeline.datamanager.ray_downscale"]
        Ovs3dSplatPipeline.check_config(config.pipeline)  # the option checks ns-train runs before training


def test_format_table_marks_missing_psnr():
    table = format_table({BASELINE: {"miou": 0.5, "accuracy": 0.75, "psnr": None}})
    assert table.splitlines()[2].split() == [BASELINE, "0.5000", "0.7500", "-"]


def test_variant_rows_switch_the_option_set(miniature):
    """The default trains its selection on DINO purity (a ``selection`` loss term); the paper variant does not."""
    result, _, _ = miniature
    default, paper = (result["rows"][name]["loss_curve"][0] for name in ("full", "full_paper"))
    assert "selection" in default and "selection" not in paper
    assert default["rda"] != pytest.approx(paper["rda"], rel=1e-3)
    assert "--pipeline.model.variant paper" in result["commands"]["full_paper"]


def test_trained_rows_have_learning_curves_and_diagnostics(miniature):
    result, _, _ = miniature
    labels = result["labels"]
    for name in NERF_ROWS:
        row = result["rows"][name]
        steps = [step for step, _ in row["miou_curve"]]
        assert steps[0] == 0 and steps[-1] == FROZEN + JOINT - 1
        assert all(0.0 <= value <= 1.0 for _, value in row["miou_curve"])
        diagnostics = row["diagnostics"]
        assert {"scale_0", "scale_mean", "selected", "rendered", "relevancy_mean"} <= set(diagnostics["miou"])
        assert set(diagnostics["class_iou"]["rendered"]) == set(labels)
        for weights in diagnostics["selection_weight"].values():
            assert weights is None or sum(weights) == pytest.approx(1.0, abs=1e-3)
        assert -1.0 <= diagnostics["mean_cosine"] <= 1.0
    # The RDA baseline is scored with the same protocols as the teacher baseline.
    assert {"miou", "miou_paper"} <= set(result["rows"][BASELINE_RDA])


def test_the_docs_tables_read_the_written_json(miniature):
    """benchmarks/synthetic_tables.py turns the JSON into the docs' tables: every row, the
    diagnostics' chain of decisions for the trained rows, and the acceptance checks with numbers."""
    from benchmarks.synthetic_tables import checks, decision_table, score_table

    _, out, _ = miniature
    written = json.loads(out.read_text())
    table = score_table([written], "miou", "accuracy")
    assert [line.split("|")[1].strip(" `") for line in table.splitlines()[2:]] == list(ROWS)
    assert "| fruit_lawn | `full` |" in decision_table([written])
    lines = checks([written])
    full, teacher = written["rows"]["full"]["miou"], written["rows"][BASELINE]["miou"]
    assert any(line.endswith(f" full {full:.3f} >= baseline_2d {teacher:.3f} + 0.05") for line in lines)
    splat = written["rows"]["splat_full"]["miou"]
    assert any(line.endswith(f" splat_full {splat:.3f} >= baseline_2d {teacher:.3f} + 0.05") for line in lines)
