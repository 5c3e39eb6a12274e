"""The learning-rate schedules: how many optimizer steps each spans, and the scheduler itself (warm-up
under every --lr_scheduler; after its last step a schedule holds its final LR)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from oat_cpgd.algorithms import get_algorithm
from oat_cpgd.args import PPOArgs


@dataclass(frozen=True)
class ScheduleSteps:
    """The optimizer steps the policy's and the critic's LR schedules span."""

    policy: float
    critic: float


def oat_schedule_steps(args: PPOArgs, num_prompts: int) -> int:
    """Optimizer steps as oat counts them before its --max_step_adjustment: one per --train_batch_size
    prompts (not responses) of each prompt epoch (oat's learner: ceil(num_prompt_epoch * floor(prompts /
    train_batch_size))). With --max_steps shorter than the epochs, the same count for the prompts those
    steps draw."""
    steps = math.ceil(args.num_prompt_epoch * (num_prompts // args.train_batch_size))
    if args.max_steps > 0:
        steps = min(steps, args.max_steps * args.rollout_batch_size // args.train_batch_size)
    return max(1, steps)


def run_optimizer_steps(args: PPOArgs, learning_steps: int) -> int:
    """The optimizer steps a run of `learning_steps` takes: each step's responses, --train_batch_size at a
    time, --num_ppo_epochs times."""
    responses = args.rollout_batch_size * args.num_samples
    return learning_steps * args.num_ppo_epochs * responses // args.train_batch_size


def schedule_steps(args: PPOArgs, num_prompts: int, learning_steps: int) -> ScheduleSteps:
    """Each schedule's length. An adjustment left to auto (None) makes the schedule end with the run; a
    given one keeps oat's meaning, oat's count times it (so oat's commands get oat's LR at every step)."""
    oat_steps = oat_schedule_steps(args, num_prompts)
    run_steps = run_optimizer_steps(args, learning_steps)

    def length(adjustment: float | None) -> float:
        return run_steps if adjustment is None else oat_steps * adjustment

    return ScheduleSteps(length(args.max_step_adjustment), length(args.critic_max_step_adjustment))


def schedule_warnings(args: PPOArgs, lengths: ScheduleSteps, learning_steps: int) -> list[str]:
    """One line per schedule that ends before the run does (then it holds its final LR meanwhile). None for
    a constant LR without warm-up, which is the same LR whatever the schedule's length."""
    if args.lr_scheduler == "constant" and args.lr_warmup_ratio == 0:
        return []
    run_steps = run_optimizer_steps(args, learning_steps)
    warnings = []
    for name, steps, flag in (
        ("policy", lengths.policy, "--max_step_adjustment"),
        ("critic", lengths.critic, "--critic_max_step_adjustment"),
    ):
        if (name == "policy" or get_algorithm(args.critic_type).needs_critic) and steps < run_steps:
            warnings.append(
                f"the {name}'s LR schedule ends after {steps:g} of the run's {run_steps} optimizer steps "
                f"({flag} {getattr(args, flag[2:])}) and holds its final LR after that; leave {flag} unset "
                f"for the schedule to end with the run."
            )
    return warnings


def lr_scheduler(
    optimizer: torch.optim.Optimizer, args: PPOArgs, total_steps: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """--lr_scheduler over `total_steps` optimizer steps (a float, as oat passes it), after
    ceil(total_steps x --lr_warmup_ratio) steps of linear warm-up from 0; after `total_steps` it holds
    the LR of its last step (transformers' cosine would rise again, as oat's does past its end).

    transformers' `constant` ignores the warm-up (so oat's does); `constant_with_warmup` honours it.
    cosine_with_min_lr ends at 10% of the peak LR, as in oat.
    """
    warmup = math.ceil(total_steps * args.lr_warmup_ratio)
    name = "constant_with_warmup" if args.lr_scheduler == "constant" and warmup > 0 else args.lr_scheduler
    extra = {"min_lr_rate": 0.1} if name == "cosine_with_min_lr" else None
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, scheduler_specific_kwargs=extra
    )
    last = math.floor(total_steps)
    scheduler.lr_lambdas = [held_after(factor, last) for factor in scheduler.lr_lambdas]
    return scheduler


def held_after(factor, last: int):
    """`factor(step)` up to step `last`, then `factor(last)`."""
    return lambda step: factor(min(step, last))
