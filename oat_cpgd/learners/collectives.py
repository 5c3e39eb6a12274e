"""Reductions over the learner ranks (torch.distributed, initialised by the learner)."""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.distributed as dist
from torch import Tensor


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks (a new tensor; gloo has no AVG)."""
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Maximum over ranks (a new tensor)."""
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate the ranks' equally shaped tensors in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def mean_over_ranks(
    metrics: dict[str, float], device: torch.device, *, maxima: Collection[str] = ()
) -> dict[str, float]:
    """The mean over ranks; the maximum for the metrics named in `maxima`."""
    means = sorted(name for name in metrics if name not in maxima)
    maxima = sorted(name for name in metrics if name in maxima)
    summed = all_reduce_sum(torch.tensor([metrics[n] for n in means], device=device, dtype=torch.float64))
    world_size = dist.get_world_size()
    reduced = {name: value / world_size for name, value in zip(means, summed.tolist(), strict=True)}
    if maxima:
        peak = all_reduce_max(torch.tensor([metrics[n] for n in maxima], device=device, dtype=torch.float64))
        reduced.update(zip(maxima, peak.tolist(), strict=True))
    return reduced
