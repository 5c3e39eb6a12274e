"""Per-request sampling seeds: pure functions of (seed, step, draw, position, prompt index)."""

from itertools import pairwise

from oat_cpgd.rollout import request_seeds


def test_seeds_are_a_pure_function_of_seed_step_draw_and_position():
    assert request_seeds(42, 3, 0, [5, 9, 1]) == request_seeds(42, 3, 0, [5, 9, 1])
    seeds = request_seeds(42, 3, 0, [5, 9, 1])
    for other in (
        request_seeds(43, 3, 0, [5, 9, 1]),
        request_seeds(42, 4, 0, [5, 9, 1]),
        request_seeds(42, 3, 1, [5, 9, 1]),
    ):
        assert not set(other) & set(seeds)
    # A later prompt does not change an earlier one's seed: chunks and restarts resend the same seeds.
    assert request_seeds(42, 3, 0, [5, 9]) == seeds[:2]


def test_a_prompt_drawn_twice_in_a_step_gets_two_seeds_whose_samples_do_not_overlap():
    seeds = request_seeds(0, 1, 0, [4, 4, 4, 4])
    assert len(set(seeds)) == 4
    # vLLM gives a prompt's k-th sample the seed + k: the ranges of K = 1024 samples stay apart and below 2**31.
    ranges = sorted((s, s + 1024) for s in seeds)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in pairwise(ranges)) and ranges[-1][1] < 2**31
