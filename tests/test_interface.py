"""The loop's pure pieces: which prompts each step draws (dynamic sampling too), and how many steps a run has."""

import pytest

from oat_cpgd.args import PPOArgs
from oat_cpgd.interface import num_learning_steps
from oat_cpgd.rollout import extra_prompt_order, fill_with_informative_groups, is_informative, prompt_order
from oat_cpgd.types import Trajectory


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


def trajectory(reward: float, prompt_index: int) -> Trajectory:
    return Trajectory(prompt_index, [1], [2], [0.0], reward, truncated=False)


def group(prompt_index: int, *rewards: float) -> list[Trajectory]:
    return [trajectory(r, prompt_index) for r in rewards]


def test_extra_draws_are_seeded_apart_from_the_epoch_order():
    first = extra_prompt_order(10, seed=3, step=2, draw=1, batch_size=4)
    assert first == extra_prompt_order(10, seed=3, step=2, draw=1, batch_size=4)  # reproducible
    assert first != extra_prompt_order(10, seed=3, step=2, draw=2, batch_size=4)
    assert first != extra_prompt_order(10, seed=3, step=3, draw=1, batch_size=4)
    assert len(set(first)) == 4 and len(extra_prompt_order(3, seed=3, step=2, draw=1, batch_size=7)) == 7


def test_dynamic_sampling_keeps_informative_groups_in_the_order_drawn():
    drawn = [group(0, 1, 1), group(1, 0, 1), group(2, 0, 0), group(3, 1, 0)]
    extra = {1: [group(4, 0, 0), group(5, 0.5, 0)], 2: [group(6, 1, 0)]}
    calls = []

    def draw_more(n):
        calls.append(n)
        return extra[n]

    groups, draws = fill_with_informative_groups(drawn, 3, draw_more, max_draws=5)
    assert [g[0].prompt_index for g in groups] == [1, 3, 5] and draws == 1 and calls == [1]
    groups, draws = fill_with_informative_groups(drawn, 4, draw_more, max_draws=2)
    assert [g[0].prompt_index for g in groups] == [1, 3, 5, 6] and draws == 2
    # Capped after one draw: 3 informative groups; uninformative ones, in the order drawn, fill the step.
    groups, draws = fill_with_informative_groups(drawn, 4, draw_more, max_draws=1)
    assert [g[0].prompt_index for g in groups] == [1, 3, 5, 0] and draws == 1
    groups, draws = fill_with_informative_groups(drawn, 4, draw_more, max_draws=0)
    assert [g[0].prompt_index for g in groups] == [1, 3, 0, 2] and draws == 0
    assert is_informative(group(0, 0.0, 0.5)) and not is_informative(group(0, 0.3, 0.3))
