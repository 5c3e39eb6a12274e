"""The behaviour/proximal gap (docs/ALGORITHMS.md, "Importance weights").

The actor samples with older weights than the learner's proximal policy (under --asynchronous
or --sync_params_every > 1), and even when synced vLLM and the learner differ numerically.
Importance weights w_t = exp(old_logp_t - actor_logp_t), truncated or masked at C, correct the
policy loss for it.
"""

import torch
from torch import Tensor

from oat_cpgd.algorithms.losses import LOG_RATIO_CLAMP, MAX, TOKEN_MEAN, declare_stats
from oat_cpgd.algorithms.utils import check_name, masked_mean

IS_CORRECTIONS = ("none", "tis", "mis")
"""none: weight 1; tis: min(w, C) (truncated IS, oat's tis_c); mis: w where w <= C, else the token is masked (0)."""


@declare_stats(
    is_weight_mean=TOKEN_MEAN, is_weight_max=MAX, is_capped_frac=TOKEN_MEAN, logprob_gap_actor_learner=TOKEN_MEAN
)
@torch.no_grad()
def importance_weights(
    old_logp: Tensor, actor_logp: Tensor, mask: Tensor, *, mode: str, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token weights (detached, 0 outside `mask`) and their stats.

    Stats over valid tokens: is_weight_mean, is_weight_max (of the raw w), is_capped_frac (share
    truncated by tis or masked by mis) and logprob_gap_actor_learner, the k3 estimate of
    KL(actor || learner), w - 1 - log w, from the actor's own samples.
    """
    check_name(mode, IS_CORRECTIONS, "importance-sampling correction")
    valid = mask.bool()
    log_weight = (old_logp - actor_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    raw = torch.exp(log_weight)
    capped = valid & (raw > cap)
    if mode == "none":
        weights, capped = torch.ones_like(raw), torch.zeros_like(capped)
    elif mode == "tis":
        weights = raw.clamp(max=cap)
    else:
        weights = torch.where(capped, 0.0, raw)
    stats = {
        "is_weight_mean": masked_mean(raw, mask),
        "is_weight_max": torch.where(valid, raw, 0).amax() if valid.any() else raw.new_zeros(()),
        "is_capped_frac": masked_mean(capped.to(raw.dtype), mask),
        "logprob_gap_actor_learner": masked_mean(torch.expm1(log_weight) - log_weight, mask),
    }
    return torch.where(valid, weights, 0), stats


def top_k_top_p_logprobs(logits: Tensor, labels: Tensor, *, top_k: int = -1, top_p: float = 1.0) -> Tensor:
    """log-probs of `labels` under softmax(logits) restricted to the top-k / top-p tokens and renormalised.

    This is the distribution vLLM samples from and reports as processed log-probs (its
    `apply_top_k_top_p`: top-k keeps logits >= the k-th largest; top-p then drops the smallest
    tokens whose cumulative probability stays <= 1 - p, always keeping the most likely one).
    Comparing the actor's log-probs with it, rather than with the full-vocabulary ones, compares
    like with like: otherwise the weights are biased below 1 by the mass top-p cut off.
    `logits` [..., V] (already divided by the temperature); a label outside the kept set gets -inf.
    """
    logits = logits.float()
    sorted_logits, order = logits.sort(dim=-1)  # ascending, as vLLM
    if top_k > 0:
        kth_largest = sorted_logits[..., -min(top_k, logits.shape[-1])].unsqueeze(-1)
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_largest, -float("inf"))
    if top_p < 1:
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        dropped = cumulative <= 1 - top_p
        dropped[..., -1] = False
        sorted_logits = sorted_logits.masked_fill(dropped, -float("inf"))
    kept = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return kept.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(kept, dim=-1)
