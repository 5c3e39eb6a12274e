"""Masked reductions and logits helpers shared by the estimators, the losses and the learner.

Masks are 0/1 (or bool) tensors shaped like the values; masked entries are dropped with
`torch.where`, not multiplied by 0, so an inf or NaN there cannot leak into a result.
"""

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def check_name(name: str, known: Iterable[str], what: str) -> str:
    """Return `name` if it is one of `known` (a registry or a tuple), else raise a ValueError listing them."""
    known = list(known)
    if name not in known:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return name


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over valid positions (all of them, or along `dim`)."""
    return torch.where(mask.bool(), x, 0).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over valid positions; 0 where there is none."""
    return masked_sum(x, mask, dim) / mask.bool().sum(dim=dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population (biased) variance of `x` over valid positions: defined for a single token too."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def batch_mean_var(
    x: Tensor, mask: Tensor, *, reduce_sum: Callable[[Tensor], Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and population variance of `x` over the valid positions of a whole batch (0-dim tensors).

    `reduce_sum` sums a tensor over the shards of a batch split across processes (e.g. an
    all-reduce over learner ranks), so the figures do not depend on how many shards there are.
    Default: this tensor is the batch.
    """
    reduce_sum = reduce_sum or (lambda t: t)
    valid = mask.bool()
    total, count = reduce_sum(torch.stack([masked_sum(x, mask), valid.sum().to(x.dtype)])).unbind()
    mean = total / count.clamp(min=1)
    return mean, reduce_sum(masked_sum((x - mean) ** 2, mask)) / count.clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, *, reduce_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(x - mean) / std over valid positions (population std, `batch_mean_var`), 0 elsewhere."""
    mean, var = batch_mean_var(x, mask, reduce_sum=reduce_sum)
    return torch.where(mask.bool(), (x - mean) * torch.rsqrt(var + 1e-8), 0)


RETURNS_VAR_FLOOR = 1e-8
"""Returns varying less than this (a std of 1e-4 reward units) count as constant: float noise in a
variance that small would turn the ratio into -1e14 (an all-0-reward batch with a KL term, say)."""


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[G - V] / Var[G] over valid tokens (1: perfect critic, 0: a constant does as well).

    A 0-dim tensor; 0 when the returns do not vary (nothing to explain), below RETURNS_VAR_FLOOR.
    """
    returns_var = masked_var(returns, mask)
    residual_var = masked_var(returns - values, mask)
    return torch.where(returns_var > RETURNS_VAR_FLOOR, 1 - residual_var / returns_var, 0)


def _at_least_float32(logits: Tensor) -> Tensor:
    # In bf16, logsumexp of logits around 20 is rounded by up to ~0.06 nat.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[labels] as logit[label] - logsumexp(logits).

    Memory-friendly: unlike log_softmax, no [..., vocab] output is kept for backward.
    """
    logits = _at_least_float32(logits)
    label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return label_logits - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-position entropy of softmax(logits): logsumexp(z) - sum_v p_v z_v."""
    logits = _at_least_float32(logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
