"""The learner's batch code on its own (no DeepSpeed, no process group): collation, the response
span, micro-batches by count or token budget, and exact accumulation weights."""

import random

import pytest
import torch

from oat_cpgd.algorithms import AGG_MODES, aggregate, aggregation_units
from oat_cpgd.learners.batch import accumulation_weights, by_token_budget, collate, micro_batches
from oat_cpgd.types import Trajectory

MAX_LEN = 24


def trajectories(count: int, seed: int = 0) -> list[Trajectory]:
    rng = random.Random(seed)
    out = []
    for index in range(count):
        prompt = [rng.randrange(3, 50) for _ in range(rng.randint(2, 9))]
        response = [rng.randrange(3, 50) for _ in range(rng.randint(1, MAX_LEN))]
        logp = [-rng.random() for _ in response]
        out.append(Trajectory(index // 4, prompt, response, logp, float(index % 2), False))
    return out


def test_collate_aligns_responses_with_their_labels():
    data = trajectories(6)
    batch = collate(data, pad_token_id=0, device=torch.device("cpu"))
    assert batch.input_ids.shape == (6, max(len(t.prompt_ids) + len(t.response_ids) for t in data))
    for row, t in enumerate(data):
        mask = batch.response_mask[row].bool()
        assert batch.labels[row][mask].tolist() == t.response_ids
        assert batch.token_data["actor_logp"][row][mask].tolist() == pytest.approx(t.actor_logprobs)
        assert int(batch.lengths[row]) == len(t.prompt_ids) + len(t.response_ids)


def test_response_span_covers_every_response_label_and_nothing_before():
    data = trajectories(8, seed=1)
    batch = collate(data, pad_token_id=0, device=torch.device("cpu"))
    span = batch.response_span()
    assert span.start == min(len(t.prompt_ids) for t in data) - 1
    assert span.stop == max(len(t.prompt_ids) + len(t.response_ids) for t in data) - 1
    outside = batch.response_mask.clone()
    outside[:, span] = 0
    assert outside.sum() == 0
    assert collate(data[:1], 0, torch.device("cpu")).select(torch.tensor([0])).response_span() == span_of(data[0])


def span_of(t: Trajectory) -> slice:
    return slice(len(t.prompt_ids) - 1, len(t.prompt_ids) + len(t.response_ids) - 1)


@pytest.mark.parametrize("max_tokens", [8, 30, 64, 200])
def test_token_budget_groups_hold_every_row_once_within_the_budget(max_tokens):
    lengths = torch.tensor([random.Random(seed).randint(1, 40) for seed in range(50)])
    groups = by_token_budget(lengths, max_tokens)
    assert sorted(torch.cat(groups).tolist()) == list(range(50))
    for group in groups:
        assert len(group) * int(lengths[group].max()) <= max_tokens or len(group) == 1


def test_token_budget_fills_groups_longest_first():
    # 10, 9 and 8 pad to 3 x 10 = 30 tokens; a fourth row would make 40, so the 3s start a group.
    groups = by_token_budget(torch.tensor([3, 10, 3, 9, 8, 3]), 30)
    assert [group.tolist() for group in groups] == [[1, 3, 4], [0, 2, 5]]


def test_micro_batches_by_count_by_budget_and_with_stand_ins():
    batch = collate(trajectories(10), pad_token_id=0, device=torch.device("cpu"))
    indices = torch.arange(10)
    by_count = micro_batches(batch, indices, rows=4)
    assert [part.tolist() for part, _ in by_count] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    by_budget = micro_batches(batch, indices, rows=4, max_tokens=64)
    assert sorted(torch.cat([part for part, _ in by_budget]).tolist()) == list(range(10))
    for part, micro in by_budget:
        assert micro.input_ids.numel() <= 64 or len(part) == 1
        assert torch.equal(micro.input_ids, batch.select(part).input_ids)
    # Another rank made 7: this one adds stand-ins, with no rows and nothing to learn from.
    padded = micro_batches(batch, indices, rows=4, reduce_max=lambda count: torch.tensor(7))
    assert len(padded) == 7
    for part, micro in padded[3:]:
        assert len(part) == 0 and micro.response_mask.sum() == 0 and len(micro) == 1


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("max_tokens", [None, 40, 120])
def test_weighted_micro_batch_losses_sum_to_the_mini_batch_loss(mode, max_tokens):
    """Two simulated ranks, each cut into micro-batches its own way (and one given a stand-in): the
    mean over ranks of their weighted sums is the loss of the whole mini-batch, as DeepSpeed's
    averaged gradient then is."""
    data = trajectories(16, seed=2)
    batch = collate(data, pad_token_id=0, device=torch.device("cpu"))
    losses = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(0))
    batch.token_data["loss"] = losses
    whole = aggregate(losses, batch.response_mask, mode, max_len=MAX_LEN)

    shards = [torch.arange(0, 8), torch.arange(8, 16)]
    parts = [micro_batches(batch, shard, rows=3, max_tokens=max_tokens) for shard in shards]
    parts[0] = parts[0] + micro_batches(batch, shards[0][:1], rows=1, reduce_max=lambda c: torch.tensor(2))[1:]
    masks = [[micro.response_mask for _, micro in rank] for rank in parts]

    def reduce_sum(counts):  # what all_reduce_sum gives: both ranks' micro-batch counts, summed
        return sum(torch.stack([torch.stack(unit_counts(m, mode)) for m in rank]).sum(0) for rank in masks)

    rank_sums = []
    for rank, rank_masks in zip(parts, masks, strict=True):
        loss_weights, _ = accumulation_weights(rank_masks, mode, world_size=2, reduce_sum=reduce_sum)
        rank_sums.append(
            sum(
                weight * aggregate(micro.token_data["loss"], micro.response_mask, mode, max_len=MAX_LEN)
                for (_, micro), weight in zip(rank, loss_weights, strict=True)
            )
        )
    assert float(sum(rank_sums) / 2) == pytest.approx(float(whole), rel=1e-5)


def unit_counts(mask: torch.Tensor, mode: str) -> list[torch.Tensor]:
    return [aggregation_units(mask, mode).float(), mask.bool().sum().float()]


def test_token_weights_are_shares_of_the_valid_tokens():
    masks = [torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([[1, 1, 1]]), torch.zeros(1, 3)]
    loss_weights, token_weights = accumulation_weights(masks, "seq-mean-token-mean")
    assert token_weights == pytest.approx([3 / 6, 3 / 6, 0])
    assert loss_weights == pytest.approx([2 / 3, 1 / 3, 0])  # sequences


@pytest.mark.parametrize("critic_type", ["grpo", "cpgd", "gspo", "cispo"])
def test_environment_tokens_get_no_loss_and_no_gradient(critic_type):
    """An episode's observation tokens (loss mask 0) are out of the response mask: the loss neither
    reads their log-probs nor counts them, whatever the algorithm (GSPO's sequence ratio included)."""
    from oat_cpgd.algorithms import get_algorithm
    from oat_cpgd.args import CPGDArgs

    episode = Trajectory(
        0, [5, 6], [7, 8, 9, 10, 11], [-1.0, 0.0, 0.0, -2.0, -0.5], 1.0, False, loss_mask=[1, 0, 0, 1, 1]
    )
    batch = collate([episode], pad_token_id=0, device=torch.device("cpu"))
    # Label position 1 predicts the first response token.
    assert batch.response_mask.tolist() == [[0, 1, 0, 0, 1, 1]]
    assert aggregation_units(batch.response_mask, "token-mean") == 3

    algorithm, flags = get_algorithm(critic_type), CPGDArgs(critic_type=critic_type)
    lo, hi = algorithm.clip

    def loss_and_grad(logp_values, advantages):
        logp = torch.tensor([logp_values], requires_grad=True)
        old = torch.tensor([[0.0, -0.9, -0.3, -0.3, -1.8, -0.6]])
        loss, _ = algorithm.loss()(
            logp, old, torch.tensor([advantages]), batch.response_mask, agg_mode=algorithm.agg_mode,
            max_len=8, is_weights=None, clip_low=lo, clip_high=hi, **algorithm.loss_options(flags),
        )  # fmt: skip
        loss.backward()
        return float(loss.detach()), logp.grad[0]

    loss, grad = loss_and_grad([0.0, -1.0, -0.2, -0.1, -2.0, -0.5], [0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert grad[[2, 3]].tolist() == [0.0, 0.0] and bool((grad[[1, 4, 5]] != 0).all())
    # Other log-probs and advantages at the observation tokens change nothing.
    other_loss, other_grad = loss_and_grad([0.0, -1.0, -7.0, -3.0, -2.0, -0.5], [0.0, 1.0, -5.0, 9.0, 1.0, 1.0])
    assert other_loss == loss and torch.equal(other_grad, grad)
