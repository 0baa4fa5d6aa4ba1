"""Alg. 1's cost, said before it runs: the estimate, its wording, and the GPU advice."""

from __future__ import annotations

from typing import List

import pytest

from ovs3d_nerfstudio.features.cost import GPU_ADVICE_SECONDS, ExtractionCost, estimate_seconds, format_duration


def test_estimate_by_hand_and_degenerate_batch():
    assert estimate_seconds(2.0, 64, 6400) == pytest.approx(200.0)
    assert estimate_seconds(0.0, 10, 1000) == 0.0
    with pytest.raises(ValueError, match="at least one crop"):
        estimate_seconds(1.0, 0, 100)


@pytest.mark.parametrize(
    "seconds, text", [(0.4, "0 s"), (45.0, "45 s"), (720.0, "12 min"), (3599.0, "1 h 00 min"), (13560.0, "3 h 46 min")]
)
def test_durations_read_like_a_wait(seconds, text):
    assert format_duration(seconds) == text


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def run_cost(device: str, seconds_per_call: float, total: int = 85_000) -> List[str]:
    lines: List[str] = []
    cost = ExtractionCost(total, device, lines.append, clock=FakeClock(seconds_per_call))
    cost.announce(views=25, cached_views=0, crops_per_view=3400, batch_size=64, device=device)
    cost.on_batch(64)
    cost.on_batch(64)  # only the first batch is reported
    assert cost.encoded == 128
    return lines


def test_real_vit_speed_on_a_cpu_advises_a_gpu():
    # ViT-B/16 on 2 CPU cores: ~0.16 s per crop, 64 crops in ~10 s.
    lines = run_cost("cpu", seconds_per_call=10.0)
    assert lines[0] == (
        "ovs3d: Alg. 1 pixel CLIP features: 25 views to compute (0 found in the cache), 85,000 CLIP crops "
        "(3,400 per view), batches of 64 on cpu."
    )
    assert lines[1].startswith("ovs3d: the first batch of 64 crops took 10.0 s: about 3 h 41 min for all 85,000 crops")
    assert lines[2].startswith("ovs3d: a GPU is advised")
    assert len(lines) == 3


def test_no_advice_when_fast_or_already_on_a_gpu():
    assert len(run_cost("cpu", seconds_per_call=0.1)) == 2  # 85,000 / 64 x 0.1 s: 2 min
    assert 85_000 / 64 * 0.1 < GPU_ADVICE_SECONDS
    assert len(run_cost("cuda:0", seconds_per_call=10.0)) == 2


def test_datamanager_announces_the_crops_before_computing(tmp_path, tiny_clip_config, tiny_dino_config, capsys):
    from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig, TrainingTargets
    from ovs3d_nerfstudio.data.ovs3d_dataparser import Ovs3dDataParserConfig
    from ovs3d_nerfstudio.data.procedural import write_scene
    from tiny_scene import tiny_scene_spec
    from ovs3d_nerfstudio.features.clip_pyramid import PyramidConfig, count_windows

    scene = write_scene(tiny_scene_spec(seed=1), tmp_path / "scene", mask_views=[0])
    config = Ovs3dDataManagerConfig(
        dataparser=Ovs3dDataParserConfig(data=scene),
        clip=tiny_clip_config,
        dino=tiny_dino_config,
        cache_dir=tmp_path / "cache",
        ray_downscale=2,
        clip_view_fraction=1.0,
        pyramid=PyramidConfig(patch_fractions=(0.5,)),
    )
    config.setup(device="cpu", targets=TrainingTargets(patches=False))
    first = capsys.readouterr().out
    crops = 8 * count_windows(24, 32, PyramidConfig(patch_fractions=(0.5,)))
    assert f"8 views to compute (0 found in the cache), {crops:,} CLIP crops" in " ".join(first.split())
    assert "the first batch of 4 crops took" in " ".join(first.split())
    config.setup(device="cpu", targets=TrainingTargets(patches=False))  # everything cached now: nothing to announce
    assert "views to compute" not in capsys.readouterr().out
