"""The LR schedule: oat's documented commands schedule as oat does, step by step; warm-up under every scheduler."""

import math

import pytest
import torch
from test_args import OAT_PPO_GSM8K, OAT_R1_ZERO_COUNTDOWN  # tests/ is on sys.path
from transformers import get_scheduler

from oat_cpgd.args import CPGDArgs, PPOArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.interface import num_learning_steps
from oat_cpgd.learners.schedule import lr_scheduler, schedule_steps


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
        optimizer(args.learning_rate), args, schedule_steps(args, num_prompts) * args.max_step_adjustment
    )
    assert lrs(ours, optimizer_steps) == lrs(oat_scheduler(args, num_prompts), optimizer_steps)


def test_oat_ppo_command_by_hand():
    # 6 epochs x floor(7473 / 64) = 696 steps x 16 = 11136 scheduled; warm-up ceil(0.03 x 11136) = 335
    # steps (oat's default ratio); polynomial decay to 1e-7 at step 11136.
    args = parse_args(PPOArgs, argv=OAT_PPO_GSM8K)
    assert args.lr_scheduler == "polynomial" and args.lr_warmup_ratio == 0.03
    total = schedule_steps(args, 7473) * args.max_step_adjustment
    assert total == 11136
    seen = lrs(lr_scheduler(optimizer(1e-6), args, total), 11137)
    assert seen[0] == 0 and seen[334] < 1e-6 and seen[335] == pytest.approx(1e-6)
    assert seen[11136] == pytest.approx(1e-7)


def test_oat_r1_zero_command_uses_oats_default_scheduler():
    # No --lr_scheduler: oat's default cosine_with_min_lr, ending at 10% of 1e-6.
    args = parse_args(CPGDArgs, argv=OAT_R1_ZERO_COUNTDOWN)
    total = schedule_steps(args, 490364) * args.max_step_adjustment  # floor(490364 / 128) = 3830 x 8 = 30640
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
    assert schedule_steps(PPOArgs(train_batch_size=8, num_prompt_epoch=2), 100) == 24
    assert schedule_steps(args, 100) == 5
