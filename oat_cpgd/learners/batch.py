"""Responses as padded tensors for the learner; per-token tensors are aligned with the labels
`input_ids[:, 1:]`: position t holds what belongs to predicting token t + 1."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from oat_cpgd.types import Trajectory


@dataclass
class Batch:
    """Responses as right-padded tensors, plus per-token data aligned with the labels."""

    input_ids: Tensor
    """[N, T] prompt + response tokens."""
    attention_mask: Tensor
    """[N, T]"""
    response_mask: Tensor
    """[N, T - 1] 1 where the label is a response token."""
    token_data: dict[str, Tensor] = field(default_factory=dict)
    """name -> [N, T - 1]: actor_logp, old_logp, ref_logp, old_values, advantages, returns."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def labels(self) -> Tensor:
        return self.input_ids[:, 1:]

    def select(self, indices: Tensor) -> Batch:
        """The rows `indices`, cut to their longest sequence (a micro-batch carries no extra padding)."""
        length = int(self.attention_mask[indices].sum(-1).max())
        return Batch(
            self.input_ids[indices, :length],
            self.attention_mask[indices, :length],
            self.response_mask[indices, : length - 1],
            {name: value[indices, : length - 1] for name, value in self.token_data.items()},
        )


def collate(trajectories: list[Trajectory], pad_token_id: int, device: torch.device) -> Batch:
    """prompt_ids + response_ids, right-padded; the actor's log-probs at the response labels."""
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
        # Label position p - 1 predicts the first response token.
        response = slice(prompt_len - 1, prompt_len - 1 + response_len)
        response_mask[row, response] = 1
        actor_logp[row, response] = torch.tensor(t.actor_logprobs, dtype=torch.float)
    return Batch(
        input_ids.to(device),
        attention_mask.to(device),
        response_mask.to(device),
        {"actor_logp": actor_logp.to(device)},
    )
