"""A custom algorithm in one file: REINFORCE on GRPO's group advantages, without clipping.

Train with it, from the repository root (the learners import this file from the launch directory):
    python -m oat_cpgd.experiment.run_grpo --critic_type examples.my_algorithm:REINFORCE ...
"""

import torch

from oat_cpgd.algorithms import MAX, POLICY_STATS, Algorithm, aggregate, declare_stats, policy_stats


@declare_stats(**POLICY_STATS, largest_log_ratio=MAX)  # how the learner reduces each stat over micro-batches and ranks
def reinforce_loss(logp, old_logp, advantages, mask, *, agg_mode, max_len, is_weights, clip_low, clip_high):
    """-A_t * (logp_t - old_logp_t) per token: the policy gradient -A grad logp, never clipped (the clips go unused)."""
    log_ratio = logp - old_logp
    loss = -advantages * log_ratio
    if is_weights is not None:  # --is_correction's weights for the actor/learner gap
        loss = loss * is_weights
    pg_loss = aggregate(loss, mask, agg_mode, max_len=max_len)
    stats = policy_stats(pg_loss, log_ratio, torch.zeros_like(log_ratio, dtype=torch.bool), mask)
    return pg_loss, {**stats, "largest_log_ratio": log_ratio.detach().where(mask.bool(), 0).abs().max()}


REINFORCE = Algorithm(policy_loss=reinforce_loss, agg_mode="seq-mean-token-mean", advantage_kwargs={"weight": "std"})
