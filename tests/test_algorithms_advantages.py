"""Advantage estimators: hand-computed cases (arithmetic in the comments) and edge cases."""

import pytest
import torch

from oat_cpgd.algorithms import (
    ADVANTAGE_ESTIMATORS,
    GROUP_WEIGHTS,
    gae_advantages,
    group_advantages,
)

WEIGHTS = list(GROUP_WEIGHTS)

# Two groups of 4: [1, 0, 0, 1] and [1, 0, 0, 0].
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
# Group means 0.5 and 0.25, so R - mean:
CENTERED = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.75, -0.25, -0.25, -0.25])


def test_std_weight_hand_computed():
    """GRPO's (and CPGD's `--cpgd_weight std`)."""
    # Unbiased stds: group 1 sqrt(4 * 0.25 / 3) = 0.577350; group 2 sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
    # 0.5 / 0.577351 = 0.866024; 0.75 / 0.500001 = 1.499997; 0.25 / 0.500001 = 0.499999.
    expected = torch.tensor([0.866024, -0.866024, -0.866024, 0.866024, 1.499997, -0.499999, -0.499999, -0.499999])
    torch.testing.assert_close(group_advantages(REWARDS, 4, weight="std"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(group_advantages(REWARDS, 4), expected, atol=1e-6, rtol=0)  # the default


def test_unit_weight_only_centers():
    """Dr. GRPO's, CPGD's `--cpgd_weight equal` and REINFORCE++-baseline's (which the learner then whitens
    over the batch, test_algorithms_utils)."""
    assert torch.equal(group_advantages(REWARDS, 4, weight="unit"), CENTERED)


def test_clip_filter_counts_groups_not_responses():
    # Groups [0, 1, 0.5] and [0, 0, 0]: G = 2 groups, 1 with unequal rewards -> omega = min(3, 2 / 1) = 2.
    # Counting responses instead (2 of 6 have a non-zero advantage, or a non-zero reward) would give
    # min(3, 6 / 2) = 3. Centered group 1: [-0.5, 0.5, 0] -> times 2: [-1, 1, 0].
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    expected = torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(group_advantages(rewards, 3, weight="clip_filter"), expected)


def test_clip_filter_cap():
    # Groups [1, 0], [0, 0], [1, 1], [0, 0]: G / G_nonzero = 4 / 1, capped at c_w = 3; centered [0.5, -0.5].
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    advantages = group_advantages(rewards, 2, weight="clip_filter")
    assert torch.equal(advantages, torch.tensor([1.5, -1.5, 0, 0, 0, 0, 0, 0]))
    # A looser cap of 10 lets omega = 4 through: [2, -2].
    advantages = group_advantages(rewards, 2, weight="clip_filter", clip_filter_max_weight=10.0)
    assert torch.equal(advantages, torch.tensor([2.0, -2.0, 0, 0, 0, 0, 0, 0]))


@pytest.mark.parametrize("weight", WEIGHTS)
def test_all_equal_rewards_give_exactly_zero(weight):
    # float32 mean of eight 0.7s is an ulp (6e-8) off 0.7; divided by std + 1e-6 that would be 0.056.
    rewards = torch.cat([torch.full((8,), 0.7), torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])])
    advantages = group_advantages(rewards, 8, weight=weight)
    assert torch.equal(advantages[:8], torch.zeros(8))
    assert advantages[8] > 0
    # No group with a signal at all: zeros, no NaN (clip_filter's G / 0).
    assert torch.equal(group_advantages(torch.full((8,), 0.7), 4, weight=weight), torch.zeros(8))


@pytest.mark.parametrize("weight", WEIGHTS)
def test_single_response_groups_give_zero(weight):
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0, 1.0]), 1, weight=weight), torch.zeros(3))


def test_integer_rewards_are_accepted():
    assert torch.equal(group_advantages(torch.tensor([1, 0, 0, 0]), 2, weight="unit"), torch.tensor([0.5, -0.5, 0, 0]))


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown group weight 'rank'; known: std, unit, leave_one_out, clip_filter"):
        group_advantages(REWARDS, 4, weight="rank")
    with pytest.raises(ValueError, match="n_prompts"):
        group_advantages(REWARDS, 3)
    with pytest.raises(ValueError, match="n_prompts"):
        group_advantages(REWARDS.view(2, 4), 4)


def test_gae_hand_computed():
    # gamma = 0.9, lam = 0.8 (gamma * lam = 0.72), r = [0, 0, 1], V = [0.5, 0.6, 0.7], V after the end = 0:
    # t=2: delta = 1 + 0 - 0.7 = 0.3;          A = 0.3
    # t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03; A = 0.03 + 0.72 * 0.3 = 0.246
    # t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04; A = 0.04 + 0.72 * 0.246 = 0.21712
    # returns = A + V = [0.71712, 0.846, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7]], dtype=torch.float64)
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3]], dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0]], dtype=torch.float64))


def test_gae_skips_padding():
    # The same 3 tokens with padding after them, and with masked positions on both sides; the
    # padding holds junk (value 5, reward 3) that must not reach the valid tokens and gets 0.
    junk = 5.0
    values = torch.tensor([[0.5, 0.6, 0.7, junk, junk], [junk, 0.5, 0.6, 0.7, junk]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 3.0, 3.0], [3.0, 0.0, 0.0, 1.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    expected_advantages = [[0.21712, 0.246, 0.3, 0, 0], [0, 0.21712, 0.246, 0.3, 0]]
    expected_returns = [[0.71712, 0.846, 1.0, 0, 0], [0, 0.71712, 0.846, 1.0, 0]]
    torch.testing.assert_close(advantages, torch.tensor(expected_advantages, dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor(expected_returns, dtype=torch.float64))


def test_gae_defaults_are_reward_to_go_minus_value():
    # gamma = lam = 1: A_t = sum_{k >= t} r_k - V_t = 1 - V_t = [0.5, 0.4, 0.3]; returns all 1.
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3))
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(returns, torch.ones(1, 3))


def test_leave_one_out_weight_hand_computed():
    """RLOO's."""
    # Leave-one-out: group 1 [1, 0, 0, 1]: 1 - (0 + 0 + 1) / 3 = 2/3, 0 - 2/3 = -2/3;
    # group 2 [1, 0, 0, 0]: 1 - 0 = 1, 0 - 1/3 = -1/3.
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.0, -1 / 3, -1 / 3, -1 / 3])
    torch.testing.assert_close(group_advantages(REWARDS, 4, weight="leave_one_out"), expected)
    # Pairs: R_1 - R_2 and R_2 - R_1.
    assert torch.equal(
        group_advantages(torch.tensor([0.25, 1.0]), 2, weight="leave_one_out"), torch.tensor([-0.75, 0.75])
    )


def test_estimator_registry():
    assert ADVANTAGE_ESTIMATORS == {"gae": gae_advantages, "group": group_advantages}
