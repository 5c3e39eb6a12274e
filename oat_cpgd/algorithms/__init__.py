"""Pure torch advantage estimators, losses and reward shaping (docs/ALGORITHMS.md), and the
registry that names, per `--critic_type`, which of them an algorithm uses (`ALGORITHMS`)."""

from oat_cpgd.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    GROUP_WEIGHTS,
    gae_advantages,
    group_advantages,
)
from oat_cpgd.algorithms.losses import (
    AGG_MODES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate,
    aggregation_units,
    cpgd_policy_loss,
    gspo_policy_loss,
    kl_penalty,
    ppo_policy_loss,
    value_loss,
)
from oat_cpgd.algorithms.off_policy import IS_CORRECTIONS, importance_weights, top_k_top_p_logprobs
from oat_cpgd.algorithms.registry import ALGORITHMS, Algorithm, get_algorithm
from oat_cpgd.algorithms.rewards import shaped_rewards
from oat_cpgd.algorithms.utils import (
    batch_mean_var,
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
    "ALGORITHMS",
    "GROUP_WEIGHTS",
    "IS_CORRECTIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "Algorithm",
    "aggregate",
    "aggregation_units",
    "batch_mean_var",
    "cpgd_policy_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "get_algorithm",
    "group_advantages",
    "gspo_policy_loss",
    "importance_weights",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "ppo_policy_loss",
    "shaped_rewards",
    "top_k_top_p_logprobs",
    "value_loss",
]
