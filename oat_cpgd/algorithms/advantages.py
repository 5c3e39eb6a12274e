"""Advantage estimators (docs/ALGORITHMS.md, "Advantage estimators").

Outcome estimators work on one scalar reward per response, grouped by prompt, and return
one advantage per response (the learner broadcasts it to the response tokens); GAE works
per token with a critic.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from oat_cpgd.algorithms.utils import check_name

GroupWeight = Callable[[Tensor, float], Tensor]
"""omega(x): (rewards [n_groups, K], clip_filter_max_weight) -> weights broadcastable to them."""


def _has_signal(grouped: Tensor) -> Tensor:
    """[n_groups] bool: the group's rewards are not all equal."""
    return grouped.amax(-1) != grouped.amin(-1)


def std_weight(grouped: Tensor, max_weight: float) -> Tensor:
    """1 / (std_g + 1e-6), unbiased std (GRPO, GSPO, CPGD's `--cpgd_weight std`)."""
    return 1 / (grouped.std(-1, keepdim=True) + 1e-6)


def clip_filter_weight(grouped: Tensor, max_weight: float) -> Tensor:
    """min(c_w, G / G_nonzero), one weight for the whole batch; G counts groups, not responses (CPGD's
    `--cpgd_weight clip_filter`)."""
    # No group with signal: G / 0 = inf, clamped to c_w (all advantages are 0 anyway).
    return (grouped.shape[0] / _has_signal(grouped).sum()).clamp(max=max_weight)


def unit_weight(grouped: Tensor, max_weight: float) -> Tensor:
    """1 (Dr. GRPO, CPGD's `--cpgd_weight equal`, REINFORCE++-baseline before its batch whitening)."""
    return grouped.new_ones(())


def leave_one_out_weight(grouped: Tensor, max_weight: float) -> Tensor:
    """K / (K - 1): R_k - mean_{j != k} R_j = (K R_k - sum_j R_j) / (K - 1) = K / (K - 1) * (R_k - mean_g R) (RLOO)."""
    size = grouped.shape[-1]
    return grouped.new_tensor(size / (size - 1))


GROUP_WEIGHTS: dict[str, GroupWeight] = {
    "std": std_weight,
    "unit": unit_weight,
    "leave_one_out": leave_one_out_weight,
    "clip_filter": clip_filter_weight,
}
"""omega(x) by what it is; an algorithm (oat_cpgd.algorithms.registry) names the one it uses."""


def group_advantages(
    rewards: Tensor, group_size: int, *, weight: str = "std", clip_filter_max_weight: float = 3.0
) -> Tensor:
    """omega(x) * (R - mean_g R) for `n_prompts * group_size` rewards, each group contiguous.

    omega per `GROUP_WEIGHTS[weight]`; `clip_filter` weighs by the whole batch, so pass
    all of it. A group whose rewards are all equal, or of size 1, gets exactly 0.
    """
    omega = GROUP_WEIGHTS[check_name(weight, GROUP_WEIGHTS, "group weight")]
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"expected a 1-D tensor of n_prompts * {group_size} rewards, got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if group_size == 1:  # no baseline to compare with; the unbiased std is undefined
        return torch.zeros_like(rewards)
    grouped = rewards.reshape(-1, group_size)
    # Exactly 0 where all rewards are equal: their float mean can be an ulp off, and 1/std
    # would blow that up to a spurious advantage of a few percent.
    centered = torch.where(_has_signal(grouped)[:, None], grouped - grouped.mean(-1, keepdim=True), 0)
    return (omega(grouped, clip_filter_max_weight) * centered).view_as(rewards)


@torch.no_grad()
def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation per token: (advantages, returns = advantages + values).

    `rewards`, `values`, `mask`: [batch, seq]; `rewards` holds R on the last response token
    plus any per-token KL shaping. The value after the last valid token is 0. Masked
    positions are skipped (the recursion runs over valid tokens only) and get 0.
    """
    valid = mask.bool()
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(valid[:, t], advantage, 0)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
    returns = torch.where(valid, advantages + values, 0)
    return advantages, returns


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Any]] = {
    "gae": gae_advantages,
    "group": group_advantages,
}
"""name -> estimator: `gae` takes (rewards, values, mask, gamma, lam) and needs a critic; the outcome
estimators take (rewards, group_size, **the algorithm's advantage_options)."""
