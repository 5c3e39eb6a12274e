"""Policy and value losses, reference-KL estimators and loss aggregation (docs/ALGORITHMS.md).

`logp`, `old_logp`, `advantages` and `mask` are [batch, seq] (advantages broadcast to tokens).
Losses return `(loss, stats)`; stats are 0-dim detached tensors, ready to all-reduce.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

from oat_cpgd.algorithms.utils import check_name, masked_mean, masked_sum

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregation_units(mask: Tensor, mode: str) -> Tensor:
    """How many units a (micro-)batch averages over in `aggregate` (0-dim integer tensor).

    Valid tokens for token-mean; sequences with at least one valid token for the seq modes.
    Exact accumulation: sum over micro-batches of aggregate(mb) * units(mb) / units(mini-batch).
    """
    valid = mask.bool()
    if check_name(mode, AGG_MODES, "loss aggregation mode") == "token-mean":
        return valid.sum()
    return valid.any(-1).sum()


def aggregate(loss_per_token: Tensor, mask: Tensor, mode: str, *, max_len: int | None = None) -> Tensor:
    """Reduce per-token losses to a scalar.

    token-mean: sum over valid tokens / their count. seq-mean-token-mean: mean over
    sequences of their token mean. seq-mean-token-sum-norm: mean over sequences of token
    sum / max_len (pass generate_max_length, so micro-batches padded to different lengths
    agree; default mask.shape[-1]). Sequences without a valid token are left out of the
    seq means; a batch without any gives 0.
    """
    units = aggregation_units(mask, mode)
    per_seq = masked_sum(loss_per_token, mask, dim=-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / mask.bool().sum(-1).clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        per_seq = per_seq / (mask.shape[-1] if max_len is None else max_len)
    return per_seq.sum() / units.clamp(min=1)


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "k1": lambda log_ratio: log_ratio,
    "k2": lambda log_ratio: 0.5 * log_ratio**2,
    "k3": lambda log_ratio: (torch.expm1(-log_ratio) + log_ratio).clamp(-10, 10),
}
"""Estimators of KL(pi_theta || pi_ref) from log_ratio = logp - ref_logp (k3 = e^-d + d - 1)."""


def kl_penalty(logp: Tensor, ref_logp: Tensor, *, kind: str = "k3") -> Tensor:
    """Per-token reference KL estimate (k1, k2 or k3, the last clamped to [-10, 10])."""
    return KL_ESTIMATORS[check_name(kind, KL_ESTIMATORS, "KL estimator")](logp - ref_logp)


def _policy_stats(pg_loss: Tensor, log_ratio: Tensor, is_clipped: Tensor, mask: Tensor) -> dict[str, Tensor]:
    log_ratio = log_ratio.detach()
    return {
        "pg_loss": pg_loss.detach(),
        "clip_frac": masked_mean(is_clipped.to(log_ratio.dtype), mask),
        # k3 estimate of KL(pi_old || pi_theta): rho - 1 - u
        "policy_drift": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
    }


LOG_RATIO_CLAMP = 20.0
"""|u| is clamped here before exp (as verl): e^88 is already inf in float32."""


def _weighted(loss_per_token: Tensor, is_weights: Tensor | None) -> Tensor:
    """The per-token loss times the (detached) importance weights, before aggregation."""
    return loss_per_token if is_weights is None else loss_per_token * is_weights.detach()


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg_mode: str = "token-mean",
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip (PPO, GRPO, Dr. GRPO, RLOO, REINFORCE++): max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)).

    The log-ratio is clamped to +-20 before the exponential. With `dual_clip` = c_dual, a token
    with A < 0 loses at most -A c_dual. `is_weights` (per token) multiply the token losses before
    aggregation. Stats: pg_loss, clip_frac (valid tokens whose gradient was clipped away),
    policy_drift (k3).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        dual_bound = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (loss > dual_bound)
        loss = torch.where(dual_clipped, dual_bound, loss)
        is_clipped = is_clipped | dual_clipped
    pg_loss = aggregate(_weighted(loss, is_weights), mask, agg_mode, max_len=max_len)
    return pg_loss, _policy_stats(pg_loss, log_ratio, is_clipped, mask)


def cpgd_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    drift_coef: float = 0.01,
    drift_clip: float = 2.0,
    agg_mode: str = "seq-mean-token-mean",
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CPGD (arXiv 2505.12504): agg(pg) + drift_coef * agg(drift), each token's terms times its `is_weights`.

    pg_t = -A_t * cu_t, the log-ratio u clipped one-sided by the sign of A: at ln(1 + eps_high)
    from above if A > 0, else at ln(1 - eps_low) from below; its gradient is -A grad logp,
    or 0 where clipped. It is 0 on-policy (no constant -A old_logp is added).
    drift_t = min(stopgrad(rho_t) - 1, c_drift) * logp_t: only its gradient means anything,
    so its value is not reported; stats hold pg_loss, clip_frac and the k3 policy_drift.
    """
    log_ratio = logp - old_logp
    # The doc's "if A > 0 ... else": A = 0 takes the lower clip; its gradient is 0 either way.
    clipped_log_ratio = torch.where(
        advantages > 0,
        log_ratio.clamp(max=math.log1p(clip_high)),
        log_ratio.clamp(min=math.log1p(-clip_low)),
    )
    pg_loss = aggregate(_weighted(-advantages * clipped_log_ratio, is_weights), mask, agg_mode, max_len=max_len)
    drift_weight = torch.expm1(log_ratio.detach().clamp(max=LOG_RATIO_CLAMP)).clamp(max=drift_clip)
    drift = aggregate(_weighted(drift_weight * logp, is_weights), mask, agg_mode, max_len=max_len)
    # As in PPO's count, an A = 0 token has no gradient to clip.
    is_clipped = (clipped_log_ratio != log_ratio) & (advantages != 0)
    return pg_loss + drift_coef * drift, _policy_stats(pg_loss, log_ratio, is_clipped, mask)


def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg_mode: str = "seq-mean-token-mean",
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (arXiv 2507.18071), its GSPO-token form: PPO-clip on the sequence-level ratio.

    s_k = exp(mean_t u_t) over the sequence's valid tokens; per token
    s_{k,t} = exp(logp_t - sg(logp_t) + sg(log s_k)), whose value is s_k and whose gradient is
    s_k * grad logp_t; the log is clamped at 10 (as verl). The clip defaults are the paper's
    (3e-4, 4e-4): a sequence ratio moves far less than a token ratio. clip_frac counts the
    tokens of clipped sequences.
    """
    log_ratio = logp - old_logp
    sequence_log_ratio = masked_mean(log_ratio.detach(), mask, dim=-1)[:, None]
    log_token_ratio = (logp - logp.detach() + sequence_log_ratio).clamp(max=10.0)
    ratio = torch.exp(log_token_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    pg_loss = aggregate(_weighted(torch.maximum(unclipped, clipped), is_weights), mask, agg_mode, max_len=max_len)
    return pg_loss, _policy_stats(pg_loss, log_ratio, clipped > unclipped, mask)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
    agg_mode: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO value loss 0.5 * max((V - G)^2, (clip(V, V_old - clip, V_old + clip) - G)^2).

    The caller multiplies by vf_coef. Stats: value_loss, value_clip_frac.
    """
    clipped_values = values.clamp(old_values - clip, old_values + clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = aggregate(0.5 * torch.maximum(unclipped_error, clipped_error), mask, agg_mode, max_len=max_len)
    is_clipped = (clipped_error > unclipped_error).to(values.dtype)
    return loss, {"value_loss": loss.detach(), "value_clip_frac": masked_mean(is_clipped, mask)}


PolicyLoss = Callable[..., tuple[Tensor, dict[str, Tensor]]]
"""(logp, old_logp, advantages, mask, *, clip_low, clip_high, agg_mode, max_len, is_weights, ...) -> (loss, stats)."""

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo_clip": ppo_policy_loss,
    "cpgd": cpgd_policy_loss,
    "gspo": gspo_policy_loss,
}
"""Policy losses by name; an algorithm (oat_cpgd.algorithms.registry) names the one it uses."""
