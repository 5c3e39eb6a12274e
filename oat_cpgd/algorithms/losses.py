"""Policy and value losses, the reference-KL estimate and loss aggregation (docs/ALGORITHMS.md).

`logp`, `old_logp`, `advantages` and `mask` are [batch, seq] (advantages broadcast to tokens).
Losses return `(loss, stats)`; stats are 0-dim detached tensors, ready to all-reduce.
"""

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from oat_cpgd.algorithms.utils import check_name, masked_mean, masked_sum

F = TypeVar("F", bound=Callable)

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


def kl_penalty(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref), e^-d + d - 1 with d = logp - ref_logp, clamped to [-10, 10]."""
    log_ratio = logp - ref_logp
    return (torch.expm1(-log_ratio) + log_ratio).clamp(-10, 10)


LOSS, TOKEN_MEAN, MAX = "loss", "token_mean", "max"
STAT_REDUCTIONS = (LOSS, TOKEN_MEAN, MAX)
"""How the learner reduces a statistic over micro-batches and ranks: `loss` weighs each micro-batch's value
as the loss does (its share of the --loss_agg_mode units), `token_mean` by its share of the valid tokens
(a mean over the whole batch's tokens), `max` takes the largest."""


def declare_stats(**reductions: str) -> Callable[[F], F]:
    """Decorator: how the learner reduces each stat `fn` returns (STAT_REDUCTIONS), e.g.
    `@declare_stats(pg_loss=LOSS, clip_frac=TOKEN_MEAN)`. The learner refuses a stat not declared."""
    for name, reduction in reductions.items():
        check_name(reduction, STAT_REDUCTIONS, f"reduction of the stat {name!r}")

    def declare(fn: F) -> F:
        fn.stat_reductions = dict(reductions)
        return fn

    return declare


def declared_stats(fn: Callable) -> dict[str, str]:
    """The stat reductions `fn` declared with `declare_stats`; a TypeError if it declared none."""
    reductions = getattr(fn, "stat_reductions", None)
    if reductions is None:
        raise TypeError(
            f"{getattr(fn, '__qualname__', fn)} does not say how its stats are reduced over micro-batches and "
            "ranks: decorate it with oat_cpgd.algorithms.declare_stats(stat_name=LOSS | TOKEN_MEAN | MAX, ...)"
        )
    return reductions


POLICY_STATS = {"pg_loss": LOSS, "clip_frac": TOKEN_MEAN, "policy_drift": TOKEN_MEAN}
"""The reductions of `policy_stats`, which every built-in policy loss reports."""


def policy_stats(pg_loss: Tensor, log_ratio: Tensor, is_clipped: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """pg_loss, clip_frac (share of valid tokens clipped) and policy_drift (k3 estimate of KL(pi_old || pi_theta))."""
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


@declare_stats(**POLICY_STATS)
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
        assert dual_clip > 1, dual_clip  # --dual_clip's check (oat_cpgd.args) says why
        dual_bound = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (loss > dual_bound)
        loss = torch.where(dual_clipped, dual_bound, loss)
        is_clipped = is_clipped | dual_clipped
    pg_loss = aggregate(_weighted(loss, is_weights), mask, agg_mode, max_len=max_len)
    return pg_loss, policy_stats(pg_loss, log_ratio, is_clipped, mask)


@declare_stats(**POLICY_STATS)
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
        log_ratio.clamp(min=math.log1p(-clip_low) if clip_low < 1 else -math.inf),  # clip_low = 1: no lower bound
    )
    pg_loss = aggregate(_weighted(-advantages * clipped_log_ratio, is_weights), mask, agg_mode, max_len=max_len)
    drift_weight = torch.expm1(log_ratio.detach().clamp(max=LOG_RATIO_CLAMP)).clamp(max=drift_clip)
    drift = aggregate(_weighted(drift_weight * logp, is_weights), mask, agg_mode, max_len=max_len)
    # As in PPO's count, an A = 0 token has no gradient to clip.
    is_clipped = (clipped_log_ratio != log_ratio) & (advantages != 0)
    return pg_loss + drift_coef * drift, policy_stats(pg_loss, log_ratio, is_clipped, mask)


@declare_stats(**POLICY_STATS)
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
    return pg_loss, policy_stats(pg_loss, log_ratio, clipped > unclipped, mask)


@declare_stats(**POLICY_STATS)
def cispo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 1.0,
    clip_high: float = 4.0,
    agg_mode: str = "token-mean",
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): the ratio clipped and detached, as a weight of the policy gradient.

    pg_t = -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) * A_t * u_t. There is no min with an unclipped
    term, so every token keeps its gradient -A_t w_t grad logp_t: the clip bounds the weight w_t, it never
    zeroes a token's update (PPO-clip zeroes those that left the trust region). The paper's loss has logp_t
    where this has u_t = logp_t - old_logp_t: the same gradient, and 0 on-policy as CPGD's pg term.
    Defaults: no lower bound (eps_low = 1: w >= 0), as the paper; the upper one, the only one it tunes, not
    published: 1 + eps_high = 5, TRL's recommended cap for cispo. clip_frac counts tokens whose weight was
    clipped (their gradient is not).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    weight = ratio.clamp(1 - clip_low, 1 + clip_high)
    pg_loss = aggregate(_weighted(-advantages * weight * log_ratio, is_weights), mask, agg_mode, max_len=max_len)
    is_clipped = (weight != ratio) & (advantages != 0)
    return pg_loss, policy_stats(pg_loss, log_ratio, is_clipped, mask)


@declare_stats(**POLICY_STATS)
def gmpo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
    agg_mode: str = "seq-mean-token-mean",
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO (arXiv 2507.20673; verl's `geo_mean` loss): PPO on the geometric mean of a sequence's token ratios.

    Each token's log-ratio is clipped in log space, one-sided by the sign of A as in CPGD: cu_t =
    min(u_t, eps_high) if A_t > 0, else max(u_t, -eps_low). Sequence k's loss is -A_k exp(mean_t cu_t)
    (A_k: its mean advantage), spread over its tokens so that --loss_agg_mode applies; the default,
    seq-mean-token-mean, is the paper's mean over sequences. Its gradient is -A_k s_k / L_k grad logp_t on
    the unclipped tokens (s_k the geometric-mean ratio, L_k the length). Defaults: the paper's (0.4, 0.4),
    ratios within [e^-0.4, e^0.4]. Importance weights enter as one per sequence, their geometric mean (a
    token that --is_correction mis masks drops its sequence).
    """
    valid = mask.bool()
    log_ratio = logp - old_logp
    clipped_log_ratio = torch.where(
        advantages > 0, log_ratio.clamp(max=clip_high), log_ratio.clamp(min=-clip_low)
    ).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    sequence_ratio = torch.exp(masked_mean(clipped_log_ratio, mask, dim=-1))
    sequence_loss = -masked_mean(advantages, mask, dim=-1) * sequence_ratio
    if is_weights is not None:
        sequence_loss = sequence_loss * torch.exp(
            masked_mean(torch.where(valid, is_weights.detach().log(), 0), mask, -1)
        )
    pg_loss = aggregate(sequence_loss[:, None].expand_as(logp), mask, agg_mode, max_len=max_len)
    is_clipped = (clipped_log_ratio != log_ratio) & (advantages != 0)
    return pg_loss, policy_stats(pg_loss, log_ratio, is_clipped, mask)


@declare_stats(value_loss=LOSS, value_clip_frac=TOKEN_MEAN)
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
    "cispo": cispo_policy_loss,
    "gmpo": gmpo_policy_loss,
}
"""Policy losses by name; an algorithm (oat_cpgd.algorithms.registry) names the one it uses. Each declares
its stats' reductions (`declare_stats`)."""
