"""Importance weights for the actor/learner gap, and the top-k/top-p log-probs vLLM reports."""

import math

import pytest
import torch

from oat_cpgd.algorithms import importance_weights, top_k_top_p_logprobs

# Four tokens, the last masked: w = exp(old - actor) = [e^0.5, e^-0.1, e^2, junk].
OLD = torch.tensor([[-1.0, -2.1, 0.0, 5.0]])
ACTOR = torch.tensor([[-1.5, -2.0, -2.0, -5.0]])
MASK = torch.tensor([[1, 1, 1, 0]])
RAW = [math.exp(0.5), math.exp(-0.1), math.exp(2.0)]  # 1.648721, 0.904837, 7.389056


def test_tis_truncates_at_c():
    weights, stats = importance_weights(OLD, ACTOR, MASK, mode="tis", cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[RAW[0], RAW[1], 2.0, 0.0]]))
    assert stats["is_weight_mean"].item() == pytest.approx(sum(RAW) / 3, rel=1e-6)
    assert stats["is_weight_max"].item() == pytest.approx(RAW[2], rel=1e-6)
    assert stats["is_capped_frac"].item() == pytest.approx(1 / 3)
    # k3 of KL(actor || learner): w - 1 - log w = [0.148721, 0.004837, 4.389056] -> mean 1.514205.
    assert stats["logprob_gap_actor_learner"].item() == pytest.approx(1.514205, rel=1e-5)


def test_mis_masks_tokens_over_c():
    weights, stats = importance_weights(OLD, ACTOR, MASK, mode="mis", cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[RAW[0], RAW[1], 0.0, 0.0]]))
    assert stats["is_capped_frac"].item() == pytest.approx(1 / 3)


def test_none_is_one_and_still_measures_the_gap():
    weights, stats = importance_weights(OLD, ACTOR, MASK, mode="none", cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert stats["is_capped_frac"].item() == 0.0
    assert stats["logprob_gap_actor_learner"].item() == pytest.approx(1.514205, rel=1e-5)
    with pytest.raises(ValueError, match="tis, mis"):
        importance_weights(OLD, ACTOR, MASK, mode="clip", cap=2.0)


def test_on_policy_weights_are_one():
    weights, stats = importance_weights(OLD, OLD.clone(), MASK, mode="tis", cap=2.0)
    torch.testing.assert_close(weights, MASK.float())
    assert stats["logprob_gap_actor_learner"].item() == 0.0


# Vocabulary of 5 with probabilities [0.4, 0.3, 0.15, 0.1, 0.05].
PROBS = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
LOGITS = PROBS.log()


def test_top_p_keeps_the_smallest_set_reaching_p_and_renormalises():
    # p = 0.8: ascending cumulative sums [0.05, 0.15, 0.3, 0.6, 1.0]; dropped where <= 1 - p = 0.2:
    # the two least likely tokens. Kept mass 0.85: token 0 -> 0.4 / 0.85, token 2 -> 0.15 / 0.85.
    labels = torch.tensor([0, 2, 4])
    logp = top_k_top_p_logprobs(LOGITS.expand(3, 5), labels, top_p=0.8)
    torch.testing.assert_close(logp[:2], torch.tensor([0.4 / 0.85, 0.15 / 0.85]).log())
    assert logp[2] == -math.inf  # cut off: vLLM cannot have sampled it


def test_top_k_then_top_p():
    # k = 2 keeps [0.4, 0.3] (renormalised 4/7, 3/7); p = 0.5 then drops 3/7 (<= 0.5): only token 0 left.
    logp = top_k_top_p_logprobs(LOGITS.expand(2, 5), torch.tensor([0, 1]), top_k=2)
    torch.testing.assert_close(logp, torch.tensor([4 / 7, 3 / 7]).log())
    logp = top_k_top_p_logprobs(LOGITS.expand(2, 5), torch.tensor([0, 1]), top_k=2, top_p=0.5)
    assert logp[0].item() == pytest.approx(0.0, abs=1e-6) and logp[1] == -math.inf


def test_no_truncation_is_the_full_softmax():
    labels = torch.tensor([1])
    assert top_k_top_p_logprobs(LOGITS[None], labels).item() == pytest.approx(math.log(0.3), rel=1e-6)
