"""The LR schedule: oat's documented commands schedule as oat does, step by step; warm-up under every scheduler."""

import math

import pytest
import torch
from test_args import OAT_PPO_GSM8K, OAT_R1_ZERO_COUNTDOWN  # tests/ is on sys.path
from transformers import get_scheduler

from oat_cpgd.args import CPGDArgs, PPOArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.interface import num_learning_steps
from oat_cpgd.learners.schedule import (
    ScheduleSteps,
    lr_scheduler,
    oat_schedule_steps,
    run_optimizer_steps,
    schedule_steps,
    schedule_warnings,
)


def optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(scheduler, steps: int) -> list[float]:
    """The LR of each of `steps` optimizer steps (DeepSpeed steps the scheduler once per optimizer step)."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def oat_scheduler(args, num_prompts: int):
    """oat's learner (oat/learners/base.py, sail-sg/oat c1a074c), written out: one step per
    train_batch_size prompts per epoch, times max_step_adjustment; min_lr for cosine_with_min_lr."""
    num_policy_sgd_steps_per_episodes = int(num_prompts * 1 // args.train_batch_size)  # max_epochs = 1
    max_steps = math.ceil(args.num_prompt_epoch * num_policy_sgd_steps_per_episodes)
    max_steps_to_schedule = max_steps * args.max_step_adjustment
    kwargs = {"min_lr": args.learning_rate * 0.1} if args.lr_scheduler == "cosine_with_min_lr" else {}
    return get_scheduler(
        args.lr_scheduler,
        optimizer(args.learning_rate),
        num_warmup_steps=math.ceil(max_steps_to_schedule * args.lr_warmup_ratio),
        num_training_steps=max_steps_to_schedule,
        scheduler_specific_kwargs=kwargs,
    )


@pytest.mark.parametrize(
    ("args_cls", "argv", "num_prompts"),
    [(PPOArgs, OAT_PPO_GSM8K, 7473), (CPGDArgs, OAT_R1_ZERO_COUNTDOWN, 490364)],
    ids=["oat-ppo-gsm8k", "oat-r1-zero-countdown"],
)
def test_oat_commands_schedule_the_lr_as_oat(args_cls, argv, num_prompts):
    """Every optimizer step of the run (learning steps x epochs x responses / train_batch_size) has oat's LR.
    Sizes: lkevinzc/gsm8k's train split (7473 rows), CountDown-Tasks-3to4 (490364 rows)."""
    args = parse_args(args_cls, default=args_cls(critic_type="ppo" if args_cls is PPOArgs else "cpgd"), argv=argv)
    optimizer_steps = (
        num_learning_steps(args, num_prompts)
        * args.num_ppo_epochs
        * args.rollout_batch_size
        * args.num_samples
        // args.train_batch_size
    )
    ours = lr_scheduler(
        optimizer(args.learning_rate), args, oat_schedule_steps(args, num_prompts) * args.max_step_adjustment
    )
    assert lrs(ours, optimizer_steps) == lrs(oat_scheduler(args, num_prompts), optimizer_steps)


def test_oat_ppo_command_by_hand():
    # 6 epochs x floor(7473 / 64) = 696 steps x 16 = 11136 scheduled; warm-up ceil(0.03 x 11136) = 335
    # steps (oat's default ratio); polynomial decay to 1e-7 at step 11136.
    args = parse_args(PPOArgs, argv=OAT_PPO_GSM8K)
    assert args.lr_scheduler == "polynomial" and args.lr_warmup_ratio == 0.03
    total = oat_schedule_steps(args, 7473) * args.max_step_adjustment
    assert total == 11136
    seen = lrs(lr_scheduler(optimizer(1e-6), args, total), 11137)
    assert seen[0] == 0 and seen[334] < 1e-6 and seen[335] == pytest.approx(1e-6)
    assert seen[11136] == pytest.approx(1e-7)


def test_oat_r1_zero_command_uses_oats_default_scheduler():
    # No --lr_scheduler: oat's default cosine_with_min_lr, ending at 10% of 1e-6.
    args = parse_args(CPGDArgs, argv=OAT_R1_ZERO_COUNTDOWN)
    total = oat_schedule_steps(args, 490364) * args.max_step_adjustment  # floor(490364 / 128) = 3830 x 8 = 30640
    assert args.lr_scheduler == "cosine_with_min_lr" and total == 30640
    seen = lrs(lr_scheduler(optimizer(1e-6), args, total), 30641)
    assert seen[0] == 0 and seen[1] == pytest.approx(1e-6)  # ceil(30640 x 1e-7) = 1 warm-up step
    assert seen[30640] == pytest.approx(1e-7)


@pytest.mark.parametrize("scheduler", ["constant", "linear", "cosine", "cosine_with_min_lr", "polynomial"])
def test_warmup_applies_under_every_scheduler(scheduler):
    # 8 steps, warm-up ratio 0.25: ceil(2) = 2 steps at 0 and lr / 2, then the peak.
    args = PPOArgs(lr_scheduler=scheduler, lr_warmup_ratio=0.25, learning_rate=1.0)
    seen = lrs(lr_scheduler(optimizer(1.0), args, 8), 4)
    assert seen[:3] == pytest.approx([0.0, 0.5, 1.0])
    if scheduler == "constant":
        assert seen[3] == 1.0


def test_max_steps_shortens_the_count():
    args = PPOArgs(train_batch_size=8, rollout_batch_size=4, num_prompt_epoch=2, max_steps=10)
    # Without --max_steps: 2 epochs x floor(100 / 8) = 24; 10 steps draw 40 prompts: 5.
    assert oat_schedule_steps(PPOArgs(train_batch_size=8, num_prompt_epoch=2), 100) == 24
    assert oat_schedule_steps(args, 100) == 5


# The user-oracle run of the first-contact report: 320 prompts, 8 per step, K = 8, 64 responses per optimizer
# step: 40 learning steps of one optimizer step each. oat's count is floor(320 / 64) = 5.
USER_RUN = dict(rollout_batch_size=8, num_samples=8, train_batch_size=64, learning_rate=1.0)


def test_the_default_schedule_ends_with_the_run():
    args = PPOArgs(**USER_RUN)
    lengths = schedule_steps(args, 320, num_learning_steps(args, 320))
    assert run_optimizer_steps(args, 40) == 40 and lengths == ScheduleSteps(40, 40)
    assert schedule_warnings(args, lengths, 40) == []
    seen = lrs(lr_scheduler(optimizer(1.0), args, lengths.policy), 41)
    # Warm-up ceil(0.03 x 40) = 2 steps (0, 1/2); then cosine over steps 2..40 down to 10% of the peak at
    # the run's end, never rising: step s has 0.1 + 0.9 x (1 + cos(pi (s - 2) / 38)) / 2.
    assert seen[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert all(later <= earlier for earlier, later in zip(seen[2:], seen[3:], strict=False))
    assert seen[20] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 18 / 38)))
    assert seen[40] == pytest.approx(0.1)


def test_ppo_epochs_lengthen_the_default_schedule():
    args = PPOArgs(**USER_RUN, num_ppo_epochs=3, train_batch_size_per_device=1)
    assert schedule_steps(args, 320, 40) == ScheduleSteps(120, 120)


def test_a_given_adjustment_keeps_oats_meaning_and_a_short_schedule_is_named():
    args = PPOArgs(**USER_RUN, max_step_adjustment=1.0, critic_max_step_adjustment=2.0)
    lengths = schedule_steps(args, 320, 40)
    assert lengths == ScheduleSteps(5, 10)  # oat's count (5) times each adjustment
    warnings = schedule_warnings(args, lengths, 40)
    assert len(warnings) == 2 and "policy" in warnings[0] and "critic" in warnings[1]
    assert "after 5 of the run's 40" in warnings[0] and "--max_step_adjustment 1.0" in warnings[0]
    # A group method trains no critic: its schedule is not worth a warning.
    grpo = PPOArgs(**USER_RUN, critic_type="grpo", max_step_adjustment=1.0, critic_max_step_adjustment=2.0)
    assert len(schedule_warnings(grpo, schedule_steps(grpo, 320, 40), 40)) == 1
    # A constant LR without warm-up is the same LR whatever the schedule's length: no warning (the demo's).
    constant = PPOArgs(**USER_RUN, lr_scheduler="constant", lr_warmup_ratio=0.0, max_step_adjustment=1.0)
    assert schedule_warnings(constant, schedule_steps(constant, 320, 40), 40) == []
    warm_up = PPOArgs(**USER_RUN, lr_scheduler="constant", lr_warmup_ratio=0.1, max_step_adjustment=1.0)
    assert len(schedule_warnings(warm_up, schedule_steps(warm_up, 320, 40), 40)) == 1


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "cosine_with_min_lr", "polynomial"])
def test_a_schedule_holds_its_final_lr_after_its_end(scheduler):
    # transformers' cosine rises again after its last step (oat's runs past it did); ours holds.
    args = PPOArgs(lr_scheduler=scheduler, lr_warmup_ratio=0.0, learning_rate=1.0)
    seen = lrs(lr_scheduler(optimizer(1.0), args, 10), 30)
    assert seen[10:] == pytest.approx([seen[10]] * 20)
    assert seen[10] == pytest.approx({"cosine_with_min_lr": 0.1, "polynomial": 1e-7}.get(scheduler, 0.0))
