"""Pure torch advantage estimators and losses for PPO, GRPO, Dr. GRPO and CPGD (docs/ALGORITHMS.md).

Picked by `--critic_type`: ppo -> gae + ppo loss, grpo -> grpo + ppo loss, drgrpo ->
dr_grpo + ppo loss, cpgd -> cpgd_{--cpgd_weight} + cpgd loss; see
`advantage_estimator_name`, `ADVANTAGE_ESTIMATORS`, `POLICY_LOSSES`, `DEFAULT_AGG_MODE`.
"""

from oat_cpgd.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    GROUP_WEIGHTS,
    advantage_estimator_name,
    gae_advantages,
    group_advantages,
)
from oat_cpgd.algorithms.losses import (
    AGG_MODES,
    DEFAULT_AGG_MODE,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate,
    aggregation_units,
    cpgd_policy_loss,
    kl_penalty,
    ppo_policy_loss,
    value_loss,
)
from oat_cpgd.algorithms.utils import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_whiten,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "DEFAULT_AGG_MODE",
    "GROUP_WEIGHTS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "advantage_estimator_name",
    "aggregate",
    "aggregation_units",
    "cpgd_policy_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "group_advantages",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "ppo_policy_loss",
    "value_loss",
]
