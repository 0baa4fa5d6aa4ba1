"""The benchmark's tables and acceptance checks on a hand-made result (benchmarks/synthetic_tables.py)."""

from __future__ import annotations

from benchmarks.synthetic_tables import checks, merge_scenes, score_table


def result(scene, scores, classes):
    """A result with the given row -> mIoU and per-class IoU of baseline_2d and full."""
    rows = {name: {"miou": value, "accuracy": 0.9, "per_class_iou": {}} for name, value in scores.items()}
    rows["baseline_2d"]["per_class_iou"] = classes["baseline_2d"]
    rows["full"]["per_class_iou"] = classes["full"]
    return {"scene": scene, "labels": list(classes["full"]), "rows": rows}


GOOD = result(
    "a",
    {"baseline_2d": 0.40, "distill_only": 0.39, "full": 0.60, "no_rda": 0.50, "no_fda": 0.55, "no_rebalance": 0.20},
    {"baseline_2d": {"ball": 0.5, "wall": 0.9}, "full": {"ball": 0.6, "wall": 0.95}},
)
BAD = result(
    "b",
    {"baseline_2d": 0.40, "distill_only": 0.30, "full": 0.42, "no_rda": 0.45, "no_fda": 0.60, "no_rebalance": 0.50},
    {"baseline_2d": {"ball": 0.5, "wall": 0.9}, "full": {"ball": 0.1, "wall": 0.95}},
)


def test_splat_full_is_checked_against_the_teacher_plus_005_per_scene():
    scores = {"baseline_2d": 0.40, "full": 0.60}
    classes = {"baseline_2d": {"ball": 0.5}, "full": {"ball": 0.6}}
    good = result("a", {**scores, "splat_full": 0.45, "splat_distill_only": 0.30}, classes)
    bad = result("b", {**scores, "splat_full": 0.449}, classes)
    lines = checks([good, bad])
    assert "PASS a: splat_full 0.450 >= baseline_2d 0.400 + 0.05" in lines
    assert "FAIL b: splat_full 0.449 >= baseline_2d 0.400 + 0.05" in lines
    assert not any("splat_distill_only" in line for line in lines)  # distillation alone has no target
    assert not any("splat_full" in line for line in checks([GOOD]))  # no splat row, no splat check


def test_tables_print_the_splat_rows_and_their_time():
    from benchmarks.synthetic_tables import class_tables, timing_table

    scene = result("a", {"baseline_2d": 0.40, "full": 0.60, "splat_full": 0.70}, {"baseline_2d": {"ball": 0.5}, "full": {"ball": 0.6}})
    scene["rows"]["splat_full"].update(per_class_iou={"ball": 0.8}, setup_seconds=10.0, train_seconds=50.0, eval_seconds=0.0)
    scene["splat_reconstruction"] = {"setup_seconds": 20.0, "train_seconds": 100.0}
    assert "| `splat_full` | 0.700 / 0.900 | 0.700 / 0.900 (1) |" in score_table([scene], "miou", "accuracy")
    assert "| `splat_full` | 0.80 |" in class_tables([scene])
    assert timing_table([scene]).splitlines()[2].endswith("| 120 | 3.0 |")  # (120 + 60) s
    assert timing_table([GOOD]).splitlines()[2].endswith("| — | — |")


def test_checks_pass_a_scene_that_meets_every_target():
    lines = checks([GOOD])
    assert lines and all(line.startswith("PASS") for line in lines), lines
    assert "PASS a: full 0.600 >= baseline_2d 0.400 + 0.05" in lines


def test_checks_name_every_failed_target_with_its_numbers():
    failed = [line for line in checks([BAD]) if line.startswith("FAIL")]
    assert "FAIL b: distill_only 0.300 >= baseline_2d 0.400 - 0.02" in failed
    assert "FAIL b: full 0.420 >= baseline_2d 0.400 + 0.05" in failed
    assert "FAIL b: lowest Table 2 row is full (0.420)" in failed
    assert "FAIL b: no object with teacher IoU >= 0.3 below 0.3 in full (ball 0.50 -> 0.10)" in failed
    assert "FAIL mean: full 0.420 > no_fda 0.600" in failed


def test_means_are_over_the_scenes_that_ran_the_row():
    only_a = dict(GOOD, rows={**GOOD["rows"], "extra": {"miou": 0.7, "accuracy": 0.8}})
    table = score_table([only_a, BAD], "miou", "accuracy")
    assert "| `full` | 0.600 / 0.900 | 0.420 / 0.900 | 0.510 / 0.900 (2) |" in table
    assert "| `extra` | 0.700 / 0.800 | — / — | 0.700 / 0.800 (1) |" in table


def test_mixed_token_fraction_counts_pixels_in_cells_shared_with_another_label(tmp_path):
    import numpy as np
    from PIL import Image

    from benchmarks.mixed_tokens import mixed_fractions

    view = tmp_path / "00"
    view.mkdir()
    (tmp_path / "classes.txt").write_text("ball\nwall\n")
    ball = np.zeros((16, 16), dtype=np.uint8)
    ball[0:8, 0:8] = 255  # one whole cell: not mixed
    ball[8:10, 8:12] = 255  # 8 pixels inside a cell the wall also covers
    Image.fromarray(ball).save(view / "ball.png")
    Image.fromarray(255 - ball).save(view / "wall.png")
    fractions = mixed_fractions(tmp_path, stride=8)
    assert fractions["ball"] == round(8 / 72, 3)
    assert fractions["wall"] == round(56 / 184, 3)


def test_files_of_one_scene_are_merged_row_by_row_in_first_seen_order():
    extra = {"scene": "a", "labels": [], "rows": {"full_paper": {"miou": 0.3}, "full": {"miou": 0.0}}}
    merged = merge_scenes([GOOD, BAD, extra])
    assert [result["scene"] for result in merged] == ["a", "b"]
    assert merged[0]["rows"]["full_paper"]["miou"] == 0.3
    assert merged[0]["rows"]["full"]["miou"] == 0.60  # the first file's row is kept
    assert "full_paper" not in GOOD["rows"]  # inputs are not modified


def test_a_splat_file_of_a_scene_brings_its_reconstruction_along():
    from benchmarks.synthetic_tables import timing_table

    splat = {
        "scene": "a",
        "labels": [],
        "rows": {"splat_full": {"miou": 0.7, "setup_seconds": 5.0, "train_seconds": 25.0}},
        "splat_reconstruction": {"setup_seconds": 10.0, "train_seconds": 80.0},
    }
    merged = merge_scenes([GOOD, splat])
    assert merged[0]["splat_reconstruction"] == splat["splat_reconstruction"]
    assert merged[0]["rows"]["splat_full"]["miou"] == 0.7 and "splat_reconstruction" not in GOOD
    assert timing_table(merged).splitlines()[2].endswith("| 90 | 2.0 |")


def test_mixed_token_sizes_are_parsed_or_refused_in_one_line():
    import argparse

    import pytest

    from benchmarks.mixed_tokens import image_size

    assert image_size("1008x756") == (1008, 756)
    for bad in ("160", "axb", "4x4"):
        with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT|8x8"):
            image_size(bad)


def test_view_table_lists_each_annotated_views_miou_of_the_rows_that_have_them():
    from benchmarks.synthetic_tables import view_table

    scene = result("a", {"baseline_2d": 0.40, "full": 0.60}, {"baseline_2d": {"ball": 0.5}, "full": {"ball": 0.6}})
    scene["rows"]["full"]["per_view_miou"] = [0.7, 0.094, 0.65]
    lines = view_table([scene]).splitlines()
    assert lines[2:] == ["| a | `full` | 0.70, 0.09, 0.65 |"]  # baseline_2d has no per-view entry: no line
