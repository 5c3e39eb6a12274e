"""Responses as padded tensors for the learner, how they are cut into micro-batches, and the weights
that make gradient accumulation over those micro-batches exact. Pure tensor code: no engine, no
process group (ranks are reached through a `reduce_sum` / `reduce_max` the caller passes).

Per-token tensors are aligned with the labels `input_ids[:, 1:]`: position t holds what belongs to
predicting token t + 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from oat_cpgd.algorithms import aggregation_units
from oat_cpgd.types import Trajectory

Reduce = Callable[[Tensor], Tensor]
"""A sum (or max) of a tensor over the learner ranks; the identity for a single process."""


def this_rank(tensor: Tensor) -> Tensor:
    return tensor


@dataclass
class Batch:
    """Responses as right-padded tensors, plus per-token data aligned with the labels."""

    input_ids: Tensor
    """[N, T] prompt + response tokens."""
    attention_mask: Tensor
    """[N, T]"""
    response_mask: Tensor
    """[N, T - 1] 1 where the label is a response token the model sampled (not an environment's)."""
    token_data: dict[str, Tensor] = field(default_factory=dict)
    """name -> [N, T - 1]: actor_logp, old_logp, ref_logp, old_values, advantages, returns."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def labels(self) -> Tensor:
        return self.input_ids[:, 1:]

    @property
    def lengths(self) -> Tensor:
        """[N] tokens of each row (prompt + response)."""
        return self.attention_mask.sum(-1)

    def response_span(self) -> slice:
        """The label positions from the first response token of any row to the last of any row: the
        only positions whose logits the losses read (the prompts' are never computed)."""
        columns = self.response_mask.bool().any(0).nonzero()[:, 0]
        if len(columns) == 0:
            return slice(0, 0)
        return slice(int(columns[0]), int(columns[-1]) + 1)

    def select(self, indices: Tensor) -> Batch:
        """The rows `indices`, cut to their longest sequence (a micro-batch carries no extra padding)."""
        length = int(self.lengths[indices].max())
        return Batch(
            self.input_ids[indices, :length],
            self.attention_mask[indices, :length],
            self.response_mask[indices, : length - 1],
            {name: value[indices, : length - 1] for name, value in self.token_data.items()},
        )


def collate(trajectories: list[Trajectory], pad_token_id: int, device: torch.device) -> Batch:
    """prompt_ids + response_ids, right-padded; the actor's log-probs at the response labels; the response
    mask 1 on the model's tokens only (`Trajectory.loss_mask`)."""
    length = max(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    shape = (len(trajectories), length)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    response_mask = torch.zeros(shape[0], length - 1)
    actor_logp = torch.zeros(shape[0], length - 1)
    for row, t in enumerate(trajectories):
        prompt_len, response_len = len(t.prompt_ids), len(t.response_ids)
        input_ids[row, : prompt_len + response_len] = torch.tensor(t.prompt_ids + t.response_ids)
        attention_mask[row, : prompt_len + response_len] = 1
        # Label position p - 1 predicts the first response token. An environment's tokens are context,
        # not actions: masked out, they get no loss, no gradient, and no count in any aggregation.
        response = slice(prompt_len - 1, prompt_len - 1 + response_len)
        response_mask[row, response] = torch.tensor(t.trained_mask(), dtype=torch.float)
        actor_logp[row, response] = torch.tensor(t.actor_logprobs, dtype=torch.float)
    return Batch(
        input_ids.to(device),
        attention_mask.to(device),
        response_mask.to(device),
        {"actor_logp": actor_logp.to(device)},
    )


def by_token_budget(lengths: Tensor, max_tokens: int) -> list[Tensor]:
    """Row positions (into `lengths`) grouped so that each group, padded to its longest row, holds at
    most `max_tokens` tokens: rows longest first, each into the first group it fits (few, full groups).
    A row longer than the budget alone gets a group of its own."""
    sizes = lengths.tolist()  # one device sync, not one per row
    groups: list[list[int]] = []
    longest: list[int] = []  # of each group; rows come longest first, so it is the first row's
    for row in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        length = sizes[row]
        for group, group_longest in zip(groups, longest, strict=True):
            if (len(group) + 1) * group_longest <= max_tokens:
                group.append(row)
                break
        else:
            groups.append([row])
            longest.append(length)
    return [torch.tensor(sorted(group), dtype=torch.long) for group in groups]


def micro_batches(
    batch: Batch,
    indices: Tensor,
    *,
    rows: int,
    max_tokens: int | None = None,
    reduce_max: Reduce = this_rank,
) -> list[tuple[Tensor, Batch]]:
    """The rows `indices` of `batch` as micro-batches, each with its row indices: `rows` at a time,
    or with `max_tokens` by token budget (`by_token_budget`, --packing).

    Every rank must run as many forward/backward passes as the others (ZeRO-3 gathers weights in
    each, and the optimizer steps after the last): a rank with fewer micro-batches gets stand-ins,
    the first two tokens of a row with no response label (so no loss, no weight) and no indices.
    """
    if max_tokens is None:
        parts = list(indices.split(rows))
    else:
        parts = [indices[group.to(indices.device)] for group in by_token_budget(batch.lengths[indices], max_tokens)]
    count = int(reduce_max(torch.tensor(len(parts), device=indices.device)))
    row = indices[:1]
    stand_in = Batch(
        batch.input_ids[row, :2],
        batch.attention_mask[row, :2],
        torch.zeros_like(batch.response_mask[row, :1]),
        {name: value[row, :1] for name, value in batch.token_data.items()},
    )
    return [(part, batch.select(part)) for part in parts] + [(indices[:0], stand_in)] * (count - len(parts))


def accumulation_weights(
    masks: list[Tensor], agg_mode: str, *, world_size: int = 1, reduce_sum: Reduce = this_rank
) -> tuple[list[float], list[float]]:
    """Exact gradient accumulation: each micro-batch's weight in its rank's loss sum.

    `masks`: this rank's micro-batches' response masks (a stand-in's all 0: weight 0). Returns the
    loss weights, each micro-batch's share of the global mini-batch's aggregation units (tokens or
    sequences, per `agg_mode`), and the token weights, its share of the valid tokens (for token-mean
    statistics). Both are multiplied by `world_size`: DeepSpeed averages the gradients over ranks, and
    the mean over ranks of the weighted sums is then the mini-batch's loss, however it was split.
    """
    counts = torch.stack(
        [torch.stack([aggregation_units(mask, agg_mode).float(), mask.bool().sum().float()]) for mask in masks]
    )  # [micro-batches, 2]: loss units, valid tokens
    global_counts = reduce_sum(counts.sum(0)).clamp(min=1)
    loss_weights, token_weights = (counts * world_size / global_counts).T.tolist()
    return loss_weights, token_weights
