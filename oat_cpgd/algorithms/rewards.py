"""Reward shaping before the advantage (docs/ALGORITHMS.md, "Reward shaping before the advantage")."""

import torch
from torch import Tensor

from oat_cpgd.algorithms.utils import masked_sum


def token_rewards(rewards: Tensor, mask: Tensor, *, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """Per-token rewards for GAE: R on each response's last valid token, minus kl_coef * kl on every valid one."""
    last_token = mask.cumsum(-1).argmax(-1, keepdim=True)
    shaped = torch.zeros_like(mask, dtype=rewards.dtype).scatter_(-1, last_token, rewards[:, None])
    if kl is not None and kl_coef:
        shaped = shaped - kl_coef * torch.where(mask.bool(), kl, 0)
    return shaped


def kl_shaped_rewards(rewards: Tensor, kl: Tensor, mask: Tensor, *, kl_coef: float) -> Tensor:
    """Outcome rewards minus kl_coef times each response's summed KL (as oat does for its group methods)."""
    return rewards - kl_coef * masked_sum(kl, mask, dim=-1)


def overlong_penalty(lengths: Tensor, *, max_len: int, buffer_len: int, factor: float) -> Tensor:
    """DAPO's soft overlong punishment: 0 up to max_len - buffer_len tokens, then falling linearly
    to -factor at max_len: min(0, -factor * (L - (max_len - buffer_len)) / buffer_len)."""
    if buffer_len <= 0:
        return torch.zeros_like(lengths, dtype=torch.float)
    excess = lengths.float() - (max_len - buffer_len)
    return (-factor * excess / buffer_len).clamp(max=0.0)
