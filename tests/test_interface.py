"""The loop's pure pieces: which prompts each step draws, and how many steps a run has."""

import pytest

from oat_cpgd.args import PPOArgs
from oat_cpgd.interface import num_learning_steps, prompt_order


def test_each_epoch_is_a_permutation_and_steps_are_reproducible():
    drawn = [i for step in range(1, 6) for i in prompt_order(10, seed=3, step=step, batch_size=4)]  # 2 epochs
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))
    assert drawn[:10] != drawn[10:20]  # a fresh order each epoch
    assert prompt_order(10, seed=3, step=3, batch_size=4) == drawn[8:12]  # crosses the epoch boundary
    assert prompt_order(10, seed=4, step=1, batch_size=4) != drawn[:4]


def test_number_of_learning_steps():
    args = PPOArgs(rollout_batch_size=4, num_prompt_epoch=2, train_batch_size=4)
    assert num_learning_steps(args, 10) == 5  # whole batches only: 20 prompts drawn
    args.max_steps = 3
    assert num_learning_steps(args, 10) == 3
    with pytest.raises(ValueError, match="less than one --rollout_batch_size"):
        num_learning_steps(PPOArgs(rollout_batch_size=64, train_batch_size=8), 10)
