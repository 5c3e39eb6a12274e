"""Reward shaping before the advantage (docs/ALGORITHMS.md, "Reward shaping before the advantage").

`shaped_rewards` is the one place where training changes the oracle's rewards: the actors report
them unshaped (with each response's truncation and length), evaluation scores them unshaped, and
the learner shapes them here, where the reference log-probs of the KL term are known.
"""

import torch
from torch import Tensor

from oat_cpgd.algorithms.utils import masked_sum


def shaped_rewards(
    rewards: Tensor,
    mask: Tensor,
    truncated: Tensor,
    *,
    max_len: int,
    non_stop_penalty: float = 0.0,
    overlong_buffer_len: int = 0,
    overlong_penalty_factor: float = 1.0,
    reward_scale: float = 1.0,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    per_token: bool = False,
) -> Tensor:
    """The rewards the advantage estimator sees, from the oracle's `rewards` [N].

    R = reward_scale * (oracle reward + non_stop_penalty if truncated + DAPO's overlong punishment),
    then minus kl_coef * kl: summed over each response for the group estimators ([N]), or, with
    `per_token` (GAE), per token ([N, T]: R on the response's last token, -kl_coef * kl on each).
    `mask` [N, T] marks the response tokens, whose count is the response's length; `truncated` [N]
    (bool): the response hit `max_len` (--generate_max_length) without a stop token; `kl` [N, T].
    """
    overlong = overlong_penalty(
        mask.sum(-1), max_len=max_len, buffer_len=overlong_buffer_len, factor=overlong_penalty_factor
    )
    penalties = torch.where(truncated, non_stop_penalty, 0.0) + overlong
    scaled = (rewards + penalties) * reward_scale
    if per_token:
        return token_rewards(scaled, mask, kl=kl, kl_coef=kl_coef)
    if kl is None or not kl_coef:
        return scaled
    return scaled - kl_coef * masked_sum(kl, mask, dim=-1)  # as oat does for its group methods


def token_rewards(rewards: Tensor, mask: Tensor, *, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """Per-token rewards for GAE: R on each response's last valid token, minus kl_coef * kl on every valid one."""
    last_token = mask.cumsum(-1).argmax(-1, keepdim=True)
    shaped = torch.zeros_like(mask, dtype=rewards.dtype).scatter_(-1, last_token, rewards[:, None])
    if kl is not None and kl_coef:
        shaped = shaped - kl_coef * torch.where(mask.bool(), kl, 0)
    return shaped


def overlong_penalty(lengths: Tensor, *, max_len: int, buffer_len: int, factor: float) -> Tensor:
    """DAPO's soft overlong punishment: 0 up to max_len - buffer_len tokens, then falling linearly
    to -factor at max_len: min(0, -factor * (L - (max_len - buffer_len)) / buffer_len)."""
    if buffer_len <= 0:
        return torch.zeros_like(lengths, dtype=torch.float)
    excess = lengths.float() - (max_len - buffer_len)
    return (-factor * excess / buffer_len).clamp(max=0.0)
