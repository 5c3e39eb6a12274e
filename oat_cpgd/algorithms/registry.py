"""One entry per algorithm (`--critic_type`): the learner looks everything up here.

To add an algorithm, write its estimator or loss as a pure function (if it needs a new one),
register that under a name (GROUP_WEIGHTS / ADVANTAGE_ESTIMATORS, POLICY_LOSSES) and add one
`Algorithm` to ALGORITHMS; `--critic_type NAME` then accepts it and the learner trains it.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oat_cpgd.algorithms.advantages import ADVANTAGE_ESTIMATORS
from oat_cpgd.algorithms.losses import AGG_MODES, POLICY_LOSSES
from oat_cpgd.algorithms.utils import check_name


@dataclass(frozen=True)
class Algorithm:
    """How the learner trains one algorithm."""

    advantage: str
    """ADVANTAGE_ESTIMATORS name; `{flag}` placeholders are filled from the flags (`cpgd_{cpgd_weight}`)."""
    policy_loss: str
    """POLICY_LOSSES name."""
    agg_mode: str
    """Default --loss_agg_mode."""
    clip: tuple[float, float] = (0.2, 0.2)
    """Default (--clip_low, --clip_high)."""
    advantage_flags: Mapping[str, str] = field(default_factory=dict)
    """Outcome-estimator keyword -> the flag it is read from (group estimators also get the group size)."""
    loss_flags: Mapping[str, str] = field(default_factory=dict)
    """Policy-loss keyword -> the flag it is read from, besides those every loss takes
    (clip_low, clip_high, agg_mode, max_len, is_weights)."""
    whiten_advantages: bool = False
    """Whiten the advantages over all valid response tokens of the whole batch (all ranks)."""
    shuffle_minibatches: bool = False
    """Shuffle responses into mini-batches (PPO, as oat); group methods keep the actor's order."""
    needs_critic: bool = False
    """Train a value model; the advantage is then GAE over per-token rewards."""
    needs_reference: bool = False
    """Load the reference model even when --beta and --kl_penalty_coef are 0."""

    def flags_used(self) -> list[str]:
        """Every flag the entry reads: those the argument classes must have."""
        placeholders = [field for _, field, _, _ in string.Formatter().parse(self.advantage) if field]
        return [*placeholders, *self.advantage_flags.values(), *self.loss_flags.values()]

    def advantage_estimator(self, flags: Any) -> str:
        name = self.advantage.format(**vars(flags))
        return check_name(name, ADVANTAGE_ESTIMATORS, "advantage estimator")

    def advantage_options(self, flags: Any) -> dict[str, Any]:
        return {keyword: getattr(flags, flag) for keyword, flag in self.advantage_flags.items()}

    def loss_options(self, flags: Any) -> dict[str, Any]:
        return {keyword: getattr(flags, flag) for keyword, flag in self.loss_flags.items()}


PPO_CLIP = {"dual_clip": "dual_clip"}

ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("gae", "ppo_clip", "token-mean", loss_flags=PPO_CLIP, shuffle_minibatches=True, needs_critic=True),
    "grpo": Algorithm("grpo", "ppo_clip", "seq-mean-token-mean", loss_flags=PPO_CLIP),
    "drgrpo": Algorithm("dr_grpo", "ppo_clip", "seq-mean-token-sum-norm", loss_flags=PPO_CLIP),
    "cpgd": Algorithm(
        "cpgd_{cpgd_weight}",
        "cpgd",
        "seq-mean-token-mean",
        advantage_flags={"clip_filter_max_weight": "clip_filter_max_weight"},
        loss_flags={"drift_coef": "policy_drift_coeff", "drift_clip": "drift_clip"},
    ),
    "rloo": Algorithm("rloo", "ppo_clip", "seq-mean-token-mean", loss_flags=PPO_CLIP),
    "reinforce_pp_baseline": Algorithm(
        "reinforce_pp_baseline", "ppo_clip", "token-mean", loss_flags=PPO_CLIP, whiten_advantages=True
    ),
    "gspo": Algorithm("grpo", "gspo", "seq-mean-token-mean", clip=(3e-4, 4e-4)),
}
"""--critic_type -> Algorithm. REINFORCE++-baseline aggregates by token-mean, as verl's recipe does."""


def get_algorithm(name: str) -> Algorithm:
    algorithm = ALGORITHMS[check_name(name, ALGORITHMS, "--critic_type")]
    check_name(algorithm.policy_loss, POLICY_LOSSES, "policy loss")
    check_name(algorithm.agg_mode, AGG_MODES, "loss aggregation mode")
    return algorithm
