"""The learning-rate schedule, counted as oat counts it, with warm-up under every scheduler."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from oat_cpgd.args import Args


def schedule_steps(args: Args, num_prompts: int) -> float:
    """Optimizer steps the LR schedules span before --max_step_adjustment, as oat counts them:
    one per --train_batch_size prompts of each prompt epoch (oat's learner:
    ceil(num_prompt_epoch * floor(prompts / train_batch_size))). With --max_steps shorter than the
    epochs, the same count for the prompts those steps draw."""
    per_epoch = num_prompts // args.train_batch_size
    steps = math.ceil(args.num_prompt_epoch * per_epoch)
    if args.max_steps > 0:
        steps = min(steps, args.max_steps * args.rollout_batch_size // args.train_batch_size)
    return max(1, steps)


def lr_scheduler(
    optimizer: torch.optim.Optimizer, args: Args, total_steps: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """--lr_scheduler over `total_steps` optimizer steps (a float, as oat passes it), after
    ceil(total_steps x --lr_warmup_ratio) steps of linear warm-up from 0.

    transformers' `constant` ignores the warm-up (so oat's does); `constant_with_warmup` honours it.
    cosine_with_min_lr ends at 10% of the peak LR, as in oat.
    """
    warmup = math.ceil(total_steps * args.lr_warmup_ratio)
    name = "constant_with_warmup" if args.lr_scheduler == "constant" and warmup > 0 else args.lr_scheduler
    extra = {"min_lr_rate": 0.1} if name == "cosine_with_min_lr" else None
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, scheduler_specific_kwargs=extra
    )
