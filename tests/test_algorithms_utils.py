"""Masked reductions and logits helpers: hand-computed values."""

import math

import pytest
import torch

from oat_cpgd.algorithms import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
)

JUNK = float("nan")  # masked positions must not leak into any result
X = torch.tensor([[1.0, 2.0, 3.0, JUNK], [5.0, JUNK, JUNK, JUNK]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_masked_mean():
    assert masked_mean(X, MASK).item() == pytest.approx(11 / 4)  # (1 + 2 + 3 + 5) / 4
    torch.testing.assert_close(masked_mean(X, MASK, dim=-1), torch.tensor([2.0, 5.0]))
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0  # nothing valid: 0, not NaN


def test_masked_whiten():
    # Valid [1, 2, 3, 5]: mean 2.75, population variance (3.0625 + 0.5625 + 0.0625 + 5.0625) / 4 = 2.1875,
    # std 1.479020: [-1.183216, -0.507093, 0.169031, 1.521278]; masked positions 0.
    expected = torch.tensor([[-1.183216, -0.507093, 0.169031, 0.0], [1.521278, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(masked_whiten(X, MASK), expected, atol=1e-5, rtol=0)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, JUNK]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # V = [1, 2, 4]: residual [0, 0, -1] has variance 1/3 - 1/9 = 2/9; Var[G] = 2/3 -> 1 - 1/3 = 2/3.
    assert explained_variance(torch.tensor([[1.0, 2.0, 4.0, JUNK]]), returns, mask).item() == pytest.approx(2 / 3)
    assert explained_variance(returns, returns, mask).item() == 1.0
    assert explained_variance(torch.zeros(1, 4), returns, mask).item() == pytest.approx(0.0)  # a constant
    assert explained_variance(torch.zeros(1, 4), torch.ones(1, 4), mask).item() == 0.0  # Var[G] = 0
    # Returns constant up to float noise: nothing to explain, not 1 - 1e-2 / 1e-14.
    noisy = torch.tensor([[1e-7, -1e-7, 0.0, JUNK]])
    assert explained_variance(torch.full((1, 4), 0.1), noisy, mask).item() == 0.0


def test_logprobs_from_logits():
    # logits [0, ln 3] -> probs [1/4, 3/4].
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    torch.testing.assert_close(
        logprobs_from_logits(logits, torch.tensor([[1, 0]])), torch.tensor([[math.log(0.75), math.log(0.25)]])
    )


def test_logprobs_from_bf16_logits_are_exact():
    # bf16 logits near 20 are rounded in steps of 0.125: computed in bf16, log-probs would be that far off.
    logits = (20 + 2 * torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))).bfloat16()
    labels = torch.randint(50, (3, 5), generator=torch.Generator().manual_seed(1))
    expected = logits.double().log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    logp = logprobs_from_logits(logits, labels)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp.double(), expected, atol=1e-5, rtol=0)


def test_entropy_from_logits():
    # Uniform over 4: ln 4. Probs [1/4, 3/4]: -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0]], [[7.0, 7.0 + math.log(3.0), -100.0, -100.0]]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[math.log(4.0)], [0.562335]]))


def test_masked_whiten_over_shards_equals_the_whole_batch():
    """With reduce_sum summing over shards (here: threads, as ranks would all-reduce), every shard
    is whitened with the whole batch's mean and std, however the batch is split."""
    import threading

    whole = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [-0.5, -0.5], [0.5, 0.5], [0.75, 0], [-0.25, 0], [-0.25, 0]])
    mask = torch.tensor([[1, 0], [1, 0], [1, 1], [1, 1], [1, 0], [1, 0], [1, 0]])
    # Valid: [0.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.75, -0.25, -0.25]: sum 0.25, n 9, mean 0.027778;
    # sum of squares 6 * 0.25 + 0.5625 + 2 * 0.0625 = 2.1875; population variance
    # 2.1875 / 9 - 0.027778^2 = 0.242284, std 0.492224: the first token (0.5 - 0.027778) / 0.492224 = 0.959365.
    expected = masked_whiten(whole, mask)
    assert expected[0, 0].item() == pytest.approx(0.959365, abs=1e-5)
    shards = [slice(0, 4), slice(4, 7)]
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def rank(r: int) -> None:
        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            slots[r] = t
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        results[r] = masked_whiten(whole[shards[r]], mask[shards[r]], reduce_sum=reduce_sum)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.testing.assert_close(torch.cat(results), expected)
    # Whitening each shard on its own (per rank) gives something else.
    assert not torch.allclose(masked_whiten(whole[shards[1]], mask[shards[1]]), expected[shards[1]])
