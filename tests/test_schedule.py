"""The staged schedule: phases, frozen groups and learning rates are functions of the step."""

import pytest
import torch

from ovs3d_nerfstudio.schedule import TRAINABLE, Phase, PhaseSchedulerConfig, ScheduleConfig, reconcile_iterations

PAPER_TOTAL = ScheduleConfig().total_steps
GROUPS = ("proposal_networks", "density", "appearance", "rgb_head", "selection", "clip_head")


def test_paper_defaults():
    schedule = ScheduleConfig()
    assert (schedule.frozen_steps, schedule.joint_steps) == (5000, 10000)
    start = schedule.reconstruction_steps
    assert schedule.learning_rate("selection", start) == pytest.approx(0.02)
    assert schedule.learning_rate("clip_head", start) == pytest.approx(1e-4)
    assert schedule.total_steps == start + 15000


def test_phase_boundaries():
    schedule = ScheduleConfig(reconstruction_steps=10, frozen_steps=5, joint_steps=5)
    assert [schedule.phase(s) for s in (0, 9, 10, 14, 15, 19)] == [
        Phase.RECONSTRUCTION, Phase.RECONSTRUCTION, Phase.SEGMENTATION_FROZEN,
        Phase.SEGMENTATION_FROZEN, Phase.SEGMENTATION_JOINT, Phase.SEGMENTATION_JOINT,
    ]  # fmt: skip


def test_frozen_groups_get_no_learning_rate():
    schedule = ScheduleConfig(reconstruction_steps=10, frozen_steps=5, joint_steps=5)
    for step in range(20):
        phase = schedule.phase(step)
        for group in ("proposal_networks", "density", "appearance", "rgb_head", "selection", "clip_head"):
            assert (schedule.learning_rate(group, step) > 0) == (group in TRAINABLE[phase])
    assert "density" not in TRAINABLE[Phase.SEGMENTATION_JOINT]
    assert "appearance" in TRAINABLE[Phase.SEGMENTATION_JOINT]


def test_segmentation_decays_to_a_tenth():
    schedule = ScheduleConfig(reconstruction_steps=0, frozen_steps=50, joint_steps=50)
    assert schedule.learning_rate("selection", 0) == pytest.approx(0.02)
    # The selection volume and CLIP head keep their rates through the joint phase, decaying.
    assert schedule.learning_rate("selection", 50) == pytest.approx(0.02 * 0.1**0.5)
    assert schedule.learning_rate("clip_head", 100) == pytest.approx(1e-4 * 0.1)
    # Groups unfrozen for fine-tuning start from the fine-tuning rates, decayed by half the stage.
    assert schedule.learning_rate("appearance", 50) == pytest.approx(5e-3 * 0.1**0.5)
    assert schedule.learning_rate("rgb_head", 100) == pytest.approx(5e-5 * 0.1)


def test_default_max_iterations_follow_a_shorter_schedule():
    schedule = ScheduleConfig(reconstruction_steps=100, frozen_steps=20, joint_steps=40)
    steps, message = reconcile_iterations(schedule, start_step=0, max_num_iterations=None)
    assert steps == 160
    assert "160 steps" in message
    # Resumed at step 150: only the 10 steps left are run.
    assert reconcile_iterations(schedule, 150, None)[0] == 10


def test_explicit_max_iterations_are_kept_and_a_short_run_is_flagged():
    schedule = ScheduleConfig(reconstruction_steps=100, frozen_steps=20, joint_steps=40)
    steps, message = reconcile_iterations(schedule, start_step=0, max_num_iterations=110)
    assert steps == 110
    assert "segmentation-frozen" in message and "--max-num-iterations 160" in message
    assert reconcile_iterations(schedule, 0, 160) == (160, "")
    assert reconcile_iterations(schedule, 0, 500) == (500, "")
    assert reconcile_iterations(ScheduleConfig(), 0, PAPER_TOTAL) == (PAPER_TOTAL, "")
    # Given explicitly, the paper schedule's length is kept even when the schedule is shorter.
    assert reconcile_iterations(schedule, 0, PAPER_TOTAL) == (PAPER_TOTAL, "")


def test_the_phase_scheduler_gives_every_group_the_schedules_rate_at_every_step():
    schedule = ScheduleConfig(reconstruction_steps=10, frozen_steps=5, joint_steps=5)
    for group in GROUPS:
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.Adam([parameter], lr=1e-2)
        scheduler = PhaseSchedulerConfig(group=group, schedule=schedule).setup().get_scheduler(optimizer, lr_init=1e-2)
        for step in range(schedule.total_steps):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.learning_rate(group, step), abs=1e-12)
            optimizer.step()
            scheduler.step()


def test_the_method_trains_with_phase_schedulers_and_explicit_iterations_are_kept(tmp_path):
    """``--max-num-iterations`` given equal to the paper schedule's length is honoured on a
    shorter schedule; left out, training follows the schedule, from a loaded checkpoint's step."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    def parse(*flags):
        args = ["ovs3d", "--pipeline.model.schedule.reconstruction-steps", "100", *flags, "ovs3d-data", "--data", str(tmp_path)]
        return tyro.cli(AnnotatedBaseConfigUnion, args=args)

    assert parse("--max-num-iterations", str(PAPER_TOTAL)).resolved().max_num_iterations == PAPER_TOTAL
    config = parse()
    resolved = config.resolved()
    assert resolved.max_num_iterations == 100 + 5000 + 10000
    for group, entry in resolved.optimizers.items():
        assert entry["scheduler"].group == group and entry["scheduler"].schedule is config.pipeline.model.schedule
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "step-000000099.ckpt").touch()
    assert parse("--load-dir", str(tmp_path / "models")).resolved().max_num_iterations == 15000


def test_phase_schedulers_move_to_the_trainers_step():
    """A scheduler that was never stepped (a checkpoint without scheduler state, --load-scheduler
    False) or fell behind (a step the mixed-precision scaler skipped) is moved to the trainer's step."""
    from ovs3d_nerfstudio.schedule import align_phase_schedulers

    schedule = ScheduleConfig(reconstruction_steps=10, frozen_steps=5, joint_steps=5)
    optimizers, schedulers = {}, {}
    for group in GROUPS:
        optimizers[group] = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
        schedulers[group] = PhaseSchedulerConfig(group=group, schedule=schedule).setup().get_scheduler(optimizers[group], lr_init=1e-2)
    step = 12  # in the frozen phase: the reconstruction-only groups are at 0, the CLIP head is not
    assert any(optimizers[g].param_groups[0]["lr"] != pytest.approx(schedule.learning_rate(g, step), abs=1e-12) for g in GROUPS)
    assert sorted(align_phase_schedulers(schedulers, step)) == sorted(GROUPS)
    for group in GROUPS:
        assert optimizers[group].param_groups[0]["lr"] == pytest.approx(schedule.learning_rate(group, step), abs=1e-12)
        assert schedulers[group].get_last_lr() == [optimizers[group].param_groups[0]["lr"]]
        optimizers[group].step()
        schedulers[group].step()  # nerfstudio's step after the iteration continues from there
        assert optimizers[group].param_groups[0]["lr"] == pytest.approx(schedule.learning_rate(group, step + 1), abs=1e-12)
    assert align_phase_schedulers(schedulers, step + 1) == []  # in step: nothing moves
    assert align_phase_schedulers({"other": object()}, 3) == []  # nerfstudio's own schedulers are left alone
