"""Reward shaping before the advantage, in one function: the length penalties, the scale, the KL."""

import torch

from oat_cpgd.algorithms import shaped_rewards

# Four responses of 3, 6, 7 and 10 tokens (mask columns), max_len 10; the last one was truncated.
MASK = torch.tensor(
    [
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]
)
TRUNCATED = torch.tensor([False, False, False, True])
REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0])


def test_without_shaping_flags_the_rewards_are_the_oracles():
    assert torch.equal(shaped_rewards(REWARDS, MASK, TRUNCATED, max_len=10), REWARDS)


def test_the_length_penalties_and_the_scale():
    # DAPO's overlong punishment, buffer 4, factor 0.5: free up to 6 tokens, then -0.5 * (L - 6) / 4:
    # 0, 0, -0.125, -0.5. --non_stop_penalty -1 on the truncated one. Then all times 2.
    shaped = shaped_rewards(
        REWARDS,
        MASK,
        TRUNCATED,
        max_len=10,
        non_stop_penalty=-1.0,
        overlong_buffer_len=4,
        overlong_penalty_factor=0.5,
        reward_scale=2.0,
    )
    torch.testing.assert_close(shaped, torch.tensor([2.0, 0.0, 1.75, -3.0]))
    # Buffer 0: no overlong punishment, whatever the factor.
    unbuffered = shaped_rewards(REWARDS, MASK, TRUNCATED, max_len=10, overlong_penalty_factor=0.5)
    assert torch.equal(unbuffered, REWARDS)


def test_the_kl_is_summed_over_each_response_for_the_group_estimators():
    # kl 0.1 per token, coef 0.5: -0.05 per valid token (3, 6, 7, 10), after the scale (not scaled by it).
    kl = torch.full(MASK.shape, 0.1)
    kl[0, 5] = 99.0  # off the response: ignored
    shaped = shaped_rewards(REWARDS, MASK, TRUNCATED, max_len=10, reward_scale=2.0, kl=kl, kl_coef=0.5)
    torch.testing.assert_close(shaped, torch.tensor([2.0 - 0.15, -0.3, 2.0 - 0.35, -0.5]))
    # coef 0: the KL is ignored.
    assert torch.equal(shaped_rewards(REWARDS, MASK, TRUNCATED, max_len=10, kl=kl), REWARDS)


def test_per_token_for_gae_puts_r_on_the_last_token_and_the_kl_on_every_one():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])  # (a prompt position before the first response)
    kl = torch.full((2, 4), 0.5)
    truncated = torch.tensor([False, True])
    rewards = torch.tensor([1.0, 2.0])
    # non-stop -1 on row 1: R = [1, 1]; the KL, 0.2 x 0.5 = 0.1, on each valid token.
    shaped = shaped_rewards(
        rewards, mask, truncated, max_len=4, non_stop_penalty=-1.0, kl=kl, kl_coef=0.2, per_token=True
    )
    torch.testing.assert_close(shaped, torch.tensor([[0.0, -0.1, 0.9, 0.0], [-0.1, -0.1, -0.1, 0.9]]))
    plain = shaped_rewards(rewards, mask, truncated, max_len=4, per_token=True)
    assert plain.tolist() == [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]]
    # Summed over each response, the per-token rewards are the per-response ones.
    per_response = shaped_rewards(rewards, mask, truncated, max_len=4, non_stop_penalty=-1.0, kl=kl, kl_coef=0.2)
    torch.testing.assert_close(shaped.sum(-1), per_response)
