"""Data passed between the roles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trajectory:
    """One sampled response to one prompt, scored by the oracle; or, with --env, one episode: the
    model's turns and the environment's observations, in order, as `response_ids`.

    Actors return a prompt's K responses contiguously; learners keep them together.
    """

    prompt_index: int
    """Row of the prompt in the training split."""
    prompt_ids: list[int]
    response_ids: list[int]
    actor_logprobs: list[float]
    """vLLM's log-prob of each sampled response token (under the sampling temperature)."""
    reward: float
    """The oracle's reward, unshaped: the learner adds the training penalties
    (`oat_cpgd.algorithms.shaped_rewards`), and dynamic sampling keeps the groups where it varies."""
    truncated: bool
    """The response hit --generate_max_length without a stop token (--non_stop_penalty's condition)."""
    weight_version: int = 0
    """Learning steps behind the weights that sampled it (0: the initial policy)."""
    prompt: str = ""
    response: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    """The oracle's info (extracted answer, format_ok, timed_out, ...)."""
    loss_mask: list[int] | None = None
    """Per response token: 1 where the model sampled it (trained on), 0 where an environment's observation
    put it (in the context, never trained on; its actor log-prob is a placeholder 0). None: all 1, a
    single-turn response."""

    def trained_mask(self) -> list[int]:
        """`loss_mask`, or all 1 for a single-turn response."""
        return [1] * len(self.response_ids) if self.loss_mask is None else self.loss_mask
