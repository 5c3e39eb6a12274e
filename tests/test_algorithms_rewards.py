"""Reward shaping before the advantage: KL shaping and DAPO's overlong punishment."""

import pytest
import torch

from oat_cpgd.algorithms import kl_shaped_rewards, overlong_penalty, token_rewards


def test_overlong_penalty_hand_computed():
    # max_len 10, buffer 4: free up to 6 tokens, then -factor * (L - 6) / 4.
    lengths = torch.tensor([3, 6, 7, 8, 10])
    penalty = overlong_penalty(lengths, max_len=10, buffer_len=4, factor=0.5)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5]))
    assert torch.equal(overlong_penalty(lengths, max_len=10, buffer_len=0, factor=0.5), torch.zeros(5))


def test_kl_shaped_rewards_subtract_the_summed_kl():
    # Response 0: kl [0.1, 0.2, junk] -> 0.3; response 1: [0.5, junk, junk] -> 0.5. coef 0.1.
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    shaped = kl_shaped_rewards(torch.tensor([1.0, 0.0]), kl, mask, kl_coef=0.1)
    torch.testing.assert_close(shaped, torch.tensor([0.97, -0.05]))


def test_token_rewards_put_r_on_the_last_token_and_shape_every_token():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    kl = torch.full((2, 4), 0.5)
    shaped = token_rewards(torch.tensor([1.0, 2.0]), mask, kl=kl, kl_coef=0.2)
    expected = torch.tensor([[0.0, -0.1, 0.9, 0.0], [-0.1, -0.1, -0.1, 1.9]])
    torch.testing.assert_close(shaped, expected)
    assert token_rewards(torch.tensor([1.0, 2.0]), mask)[1].tolist() == pytest.approx([0, 0, 0, 2.0])
