"""Losses, the reference-KL estimate and aggregation: hand-computed values, gradients and micro-batch accumulation."""

import itertools
import math

import pytest
import torch
from torch.autograd import gradcheck

from oat_cpgd.algorithms import (
    AGG_MODES,
    POLICY_LOSSES,
    aggregate,
    aggregation_units,
    cispo_policy_loss,
    cpgd_policy_loss,
    declare_stats,
    declared_stats,
    gmpo_policy_loss,
    gspo_policy_loss,
    kl_penalty,
    ppo_policy_loss,
    value_loss,
)

F64 = torch.float64
MAX_LEN = 9  # generate_max_length for seq-mean-token-sum-norm; longer than any test sequence
LENGTHS = [7, 3, 0, 5, 1, 6]  # valid tokens per sequence, one of them empty
TOKEN_LEVEL_LOSS_FNS = [ppo_policy_loss, cpgd_policy_loss, gspo_policy_loss, cispo_policy_loss]
"""Policy losses whose gradient on-policy is REINFORCE's for any advantages, and whose importance weights
multiply each token's loss (GMPO's are sequence-level: its own tests below)."""
POLICY_LOSS_FNS = [*TOKEN_LEVEL_LOSS_FNS, gmpo_policy_loss]


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def random_batch(seed: int) -> dict[str, torch.Tensor]:
    """A [6, 7] float64 batch; |log-ratio| up to 0.6 crosses both clip bounds; junk in the padding."""
    gen = torch.Generator().manual_seed(seed)
    shape = (len(LENGTHS), max(LENGTHS))
    mask = torch.arange(shape[1]) < torch.tensor(LENGTHS)[:, None]
    logp = -3 * torch.rand(shape, generator=gen, dtype=F64)
    old_logp = logp + 1.2 * torch.rand(shape, generator=gen, dtype=F64) - 0.6
    advantages = torch.randn(shape, generator=gen, dtype=F64)
    advantages[0, :3] = 0.0  # A = 0 tokens
    return {"logp": logp, "old_logp": old_logp, "advantages": advantages, "mask": mask}


def agg_weights(mask: torch.Tensor, mode: str, max_len: int) -> torch.Tensor:
    """d aggregate(x) / d x_t, written out per mode."""
    m = mask.to(F64)
    if mode == "token-mean":
        return m / m.sum()
    n_sequences = (m.sum(-1) > 0).sum()
    per_sequence = m / m.sum(-1, keepdim=True).clamp(min=1) if mode == "seq-mean-token-mean" else m / max_len
    return per_sequence / n_sequences


def grad_of(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


# --- aggregation -------------------------------------------------------------------------

X = t([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])  # 9 = junk in masked positions
X_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # the third sequence is empty


@pytest.mark.parametrize(
    "mode, max_len, expected",
    [
        ("token-mean", None, 2.5),  # (1 + 2 + 3 + 4) / 4 tokens
        ("seq-mean-token-mean", None, 3.0),  # (6 / 3 + 4 / 1) / 2 non-empty sequences
        ("seq-mean-token-sum-norm", 4, 1.25),  # (6 / 4 + 4 / 4) / 2
        ("seq-mean-token-sum-norm", None, 5 / 3),  # max_len = 3 columns: (6 / 3 + 4 / 3) / 2
    ],
)
def test_aggregate_hand_computed(mode, max_len, expected):
    assert aggregate(X, X_MASK, mode, max_len=max_len).item() == pytest.approx(expected)


def test_aggregation_units_hand_computed():
    assert aggregation_units(X_MASK, "token-mean").item() == 4
    assert aggregation_units(X_MASK, "seq-mean-token-mean").item() == 2  # the empty sequence is no unit
    assert aggregation_units(X_MASK, "seq-mean-token-sum-norm").item() == 2


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_of_nothing_is_zero_with_zero_gradient(mode):
    x = torch.full((2, 3), float("inf"), dtype=F64, requires_grad=True)
    loss = aggregate(x, torch.zeros(2, 3), mode)
    assert loss.item() == 0.0
    assert torch.equal(grad_of(loss, x), torch.zeros(2, 3, dtype=F64))


def test_unknown_aggregation_mode():
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"):
        aggregate(X, X_MASK, "seq-sum")


# --- CPGD ----------------------------------------------------------------------------------


def test_cpgd_worked_example():
    """docs/ALGORITHMS.md, "Worked example" (token-mean, eps = 0.2, c_drift = 2, alpha = 0.01)."""
    logp = t([[-0.9, -1.7, -0.5]]).requires_grad_()
    old_logp, advantages, mask = t([[-1.0, -2.0, -0.5]]), torch.ones(1, 3, dtype=F64), torch.ones(1, 3)
    loss, stats = cpgd_policy_loss(logp, old_logp, advantages, mask, agg_mode="token-mean")
    # u = [0.1, 0.3, 0]; ln 1.2 = 0.182322 clips token 2: pg = -(0.1 + 0.182322 + 0) / 3 = -0.094107.
    assert stats["pg_loss"].item() == pytest.approx(-0.094107, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    # k3 = rho - 1 - u = [1.105171 - 1.1, 1.349859 - 1.3, 0] = [0.005171, 0.049859, 0] -> mean 0.018343.
    assert stats["policy_drift"].item() == pytest.approx(0.018343, abs=1e-6)
    # Loss value: pg + 0.01 * mean([0.105171 * -0.9, 0.349859 * -1.7, 0]) = -0.094107 - 0.002298.
    assert loss.item() == pytest.approx(-0.096405, abs=1e-6)
    expected_grad = t([[-0.332983, 0.001166, -0.333333]])
    torch.testing.assert_close(grad_of(loss, logp), expected_grad, atol=1e-6, rtol=0)


def test_cpgd_negative_advantages_and_drift_clamp():
    # token-mean, alpha = 0.01, c_drift = 2, ln 0.8 = -0.223144:
    # t0: A = -1, u = 2 (rho = 7.389): A < 0 only clips below, so not clipped: pg = 2;
    #     grad = (-A + alpha * min(6.389, 2)) / 3 = (1 + 0.02) / 3 = 0.34
    # t1: A = -1, u = -0.3 < ln 0.8: clipped: pg = -0.223144;
    #     grad = alpha * (e^-0.3 - 1) / 3 = 0.01 * -0.259182 / 3 = -0.000863939
    # t2: A = -2, u = -0.1: pg = -0.2; grad = (2 + 0.01 * (e^-0.1 - 1)) / 3 = (2 - 0.000951626) / 3 = 0.666349458
    # pg = (2 - 0.223144 - 0.2) / 3 = 0.525619
    logp = t([[0.0, -1.3, -1.1]]).requires_grad_()
    old_logp, advantages = t([[-2.0, -1.0, -1.0]]), t([[-1.0, -1.0, -2.0]])
    loss, stats = cpgd_policy_loss(logp, old_logp, advantages, torch.ones(1, 3), agg_mode="token-mean")
    assert stats["pg_loss"].item() == pytest.approx(0.525619, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    expected_grad = t([[0.34, -0.000863939, 0.666349458]])
    torch.testing.assert_close(grad_of(loss, logp), expected_grad, atol=1e-9, rtol=0)


def test_cpgd_clip_low_1_is_no_lower_bound():
    # One token, A = -1, u = -2 (rho = e^-2 = 0.135335), alpha = 0.01: drift grad 0.01 * (0.135335 - 1) = -0.008647.
    # eps_low = 0.2: u < ln 0.8 is clipped, pg grad 0 -> -0.008647. eps_low = 1 (ln 0 = -inf): not clipped,
    # pg grad -A = 1 -> 0.991353.
    logp = t([[-2.0]]).requires_grad_()
    batch = (torch.zeros(1, 1, dtype=F64), t([[-1.0]]), torch.ones(1, 1))
    grads = [grad_of(cpgd_policy_loss(logp, *batch, clip_low=low)[0], logp).item() for low in (0.2, 1.0)]
    assert grads == pytest.approx([-0.008647, 0.991353], abs=1e-6)


@pytest.mark.parametrize("loss_fn", [cpgd_policy_loss, ppo_policy_loss, gmpo_policy_loss])
def test_zero_advantage_tokens_are_not_counted_as_clipped(loss_fn):
    # u = [-0.5, 0.5] lies outside both clip bounds, but with A = 0 there is no gradient to clip.
    _, stats = loss_fn(t([[-1.5, -0.5]]), t([[-1.0, -1.0]]), torch.zeros(1, 2, dtype=F64), torch.ones(1, 2))
    assert stats["clip_frac"].item() == 0.0


@pytest.mark.parametrize("mode", AGG_MODES)
def test_cpgd_gradient_formula(mode):
    """d loss / d logp = (-A * 1[not clipped] + alpha * min(rho - 1, c_drift)) * agg_weight."""
    batch = random_batch(seed=0)
    logp = batch["logp"].requires_grad_()
    alpha, c_drift = 0.5, 0.3  # large enough to matter, and a clamp that bites
    loss, _ = cpgd_policy_loss(**batch, drift_coef=alpha, drift_clip=c_drift, agg_mode=mode, max_len=MAX_LEN)
    u, advantages, mask = batch["logp"].detach() - batch["old_logp"], batch["advantages"], batch["mask"]
    not_clipped = torch.where(advantages > 0, u <= math.log(1.2), u >= math.log(0.8))
    expected = (-advantages * not_clipped + alpha * (u.exp() - 1).clamp(max=c_drift)) * agg_weights(mask, mode, MAX_LEN)
    # The case covers clipped and unclipped tokens, both clip sides, and the drift clamp.
    valid = mask.bool()
    assert (~not_clipped & valid & (advantages > 0)).any() and (~not_clipped & valid & (advantages < 0)).any()
    assert (not_clipped & valid).any() and ((u.exp() - 1 > c_drift) & valid).any()
    grad = grad_of(loss, logp)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_cpgd_pg_term_against_finite_differences(mode):
    # Without drift the loss value is the pg term, whose value and gradient agree.
    batch = random_batch(seed=1)
    logp = batch.pop("logp").requires_grad_()

    def pg(logp):
        return cpgd_policy_loss(logp, **batch, drift_coef=0.0, agg_mode=mode, max_len=MAX_LEN)[0]

    assert gradcheck(pg, (logp,))


@pytest.mark.parametrize("loss_fn", TOKEN_LEVEL_LOSS_FNS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_on_policy_gradient_is_reinforce(loss_fn, mode):
    batch = random_batch(seed=2)
    logp = batch["logp"].requires_grad_()
    batch["old_logp"] = batch["logp"].detach().clone()
    loss, stats = loss_fn(**batch, agg_mode=mode, max_len=MAX_LEN)
    reinforce = aggregate(-batch["advantages"] * logp, batch["mask"], mode, max_len=MAX_LEN)
    torch.testing.assert_close(grad_of(loss, logp), grad_of(reinforce, logp), atol=1e-12, rtol=0)
    # CPGD's and CISPO's pg is -A * w * u = 0 on-policy; PPO's and GSPO's -A * ratio = -A.
    ppo_pg = aggregate(-batch["advantages"], batch["mask"], mode, max_len=MAX_LEN).item()
    in_log_ratios = loss_fn in (cpgd_policy_loss, cispo_policy_loss)
    assert stats["pg_loss"].item() == pytest.approx(0.0 if in_log_ratios else ppo_pg, abs=1e-12)
    assert stats["clip_frac"].item() == 0.0 and stats["policy_drift"].item() == 0.0


# --- PPO-clip ------------------------------------------------------------------------------


def test_ppo_hand_computed():
    # token-mean, eps = 0.2, rho = [1.1, 1.5, 1.5, 0.5], A = [2, -1, 1, -1]:
    # t0: max(-2.2, -2.2) = -2.2, grad -A rho = -2.2
    # t1: max(1.5, 1.2) = 1.5 (unclipped), grad 1.5
    # t2: max(-1.5, -1.2) = -1.2 (clipped), grad 0
    # t3: max(0.5, 0.8) = 0.8 (clipped), grad 0
    # loss = (-2.2 + 1.5 - 1.2 + 0.8) / 4 = -0.275; grad / 4 = [-0.55, 0.375, 0, 0]; clip_frac 2 / 4
    # A fifth, masked token (rho = 3, A = 1) would be clipped and drift, but must count for nothing.
    old_logp, mask = torch.zeros(1, 5, dtype=F64), torch.tensor([[1, 1, 1, 1, 0]])
    logp = t([[1.1, 1.5, 1.5, 0.5, 3.0]]).log().requires_grad_()
    loss, stats = ppo_policy_loss(logp, old_logp, t([[2.0, -1.0, 1.0, -1.0, 1.0]]), mask)
    assert loss.item() == pytest.approx(-0.275)
    assert stats["pg_loss"].item() == pytest.approx(-0.275)
    assert stats["clip_frac"].item() == 0.5
    # k3 = rho - 1 - ln rho = [0.1 - 0.095310, 0.5 - 0.405465 (twice), -0.5 + 0.693147]
    #    = [0.004690, 0.094535, 0.094535, 0.193147] -> mean 0.386907 / 4 = 0.096727
    assert stats["policy_drift"].item() == pytest.approx(0.096727, abs=1e-6)
    torch.testing.assert_close(grad_of(loss, logp), t([[-0.55, 0.375, 0.0, 0.0, 0.0]]))


def test_ppo_dual_clip():
    # A = [-1, -1], rho = [5, 2]: PPO-clip gives max(5, 1.2) = 5 and max(2, 1.2) = 2 (nothing clipped);
    # dual clip 3 caps t0 at -A * 3 = 3 (grad 0), t1 stays 2 (grad -A rho = 2).
    # loss = (3 + 2) / 2 = 2.5, grad = [0, 2 / 2 = 1], clip_frac 1 / 2.
    logp = t([[5.0, 2.0]]).log().requires_grad_()
    old_logp, advantages, mask = torch.zeros(1, 2, dtype=F64), t([[-1.0, -1.0]]), torch.ones(1, 2)
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask)
    assert loss.item() == pytest.approx(3.5) and stats["clip_frac"].item() == 0.0
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, dual_clip=3.0)
    assert loss.item() == pytest.approx(2.5) and stats["clip_frac"].item() == 0.5
    torch.testing.assert_close(grad_of(loss, logp), t([[0.0, 1.0]]))


@pytest.mark.parametrize("dual_clip", [None, 1.3])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_ppo_against_finite_differences(mode, dual_clip):
    batch = random_batch(seed=3)
    logp = batch.pop("logp").requires_grad_()

    def loss(logp):
        return ppo_policy_loss(logp, **batch, dual_clip=dual_clip, agg_mode=mode, max_len=MAX_LEN)[0]

    assert gradcheck(loss, (logp,))
    # Clipped tokens and masked tokens get exactly no gradient.
    _, stats = ppo_policy_loss(logp, **batch, dual_clip=dual_clip)
    assert stats["clip_frac"] > 0
    rho = (logp.detach() - batch["old_logp"]).exp()
    advantages, valid = batch["advantages"], batch["mask"].bool()
    clipped = ((advantages > 0) & (rho > 1.2)) | ((advantages < 0) & (rho < 0.8))
    grad = grad_of(loss(logp), logp)
    assert clipped[valid].any() and torch.equal(grad[clipped | ~valid], torch.zeros_like(grad[clipped | ~valid]))


def test_ppo_log_ratio_is_clamped_before_the_exponential():
    # float32 e^100 is inf; clamped at 20 the loss of an A < 0 token is e^20 = 4.85165e8, finite.
    logp = torch.tensor([[100.0]]).requires_grad_()
    loss, stats = ppo_policy_loss(logp, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(20), rel=1e-6)
    assert torch.isfinite(grad_of(loss, logp)).all()


# --- GSPO ----------------------------------------------------------------------------------

# Sequence 1: u = [0.1, 0.3], A = 1: s = e^mean(u) = e^0.2 = 1.221403. Sequence 2: u = [0], A = -1: s = 1.
GSPO_LOGP, GSPO_OLD = [[-0.9, -1.7], [-0.5, 0.0]], [[-1.0, -2.0], [-0.5, 0.0]]
GSPO_ADV, GSPO_MASK = [[1.0, 1.0], [-1.0, -1.0]], torch.tensor([[1, 1], [1, 0]])


def test_gspo_hand_computed_with_wide_clips():
    # clips (0.2, 0.3): s = 1.221403 stays unclipped. Token losses -A s: seq 1 [-1.221403, -1.221403],
    # seq 2 [1]. seq-mean-token-mean: (-1.221403 + 1) / 2 = -0.110701.
    # Gradient -A s * weight: every token of a sequence shares s (a per-token ratio would give
    # e^0.1 and e^0.3): seq 1 tokens -1.221403 / 2 / 2 = -0.305351; seq 2 token 1 / 2 = 0.5.
    logp = t(GSPO_LOGP).requires_grad_()
    loss, stats = gspo_policy_loss(logp, t(GSPO_OLD), t(GSPO_ADV), GSPO_MASK, clip_low=0.2, clip_high=0.3)
    assert loss.item() == pytest.approx(-0.110701, abs=1e-6)
    assert stats["clip_frac"].item() == 0.0
    torch.testing.assert_close(grad_of(loss, logp), t([[-0.305351, -0.305351], [0.5, 0.0]]), atol=1e-6, rtol=0)


def test_gspo_paper_clips_are_the_default():
    # (3e-4, 4e-4): s = 1.221403 is clipped to 1.0004 for seq 1 (no gradient there):
    # (-1.0004 + 1) / 2 = -0.0002; clip_frac: seq 1's 2 of the 3 valid tokens.
    logp = t(GSPO_LOGP).requires_grad_()
    loss, stats = gspo_policy_loss(logp, t(GSPO_OLD), t(GSPO_ADV), GSPO_MASK)
    assert loss.item() == pytest.approx(-0.0002, abs=1e-9)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    torch.testing.assert_close(grad_of(loss, logp), t([[0.0, 0.0], [0.5, 0.0]]))


def test_gspo_sequence_log_ratio_is_clamped_at_10():
    # u = 15 on a one-token sequence with A = -1 (no clip from above): loss = e^10 = 22026.466.
    loss, _ = gspo_policy_loss(t([[15.0]]), t([[0.0]]), t([[-1.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(10))


# --- CISPO ---------------------------------------------------------------------------------

# rho = [2, 8, 0.5], A = [1, 1, -1]: u = [ln 2, ln 8, ln 0.5] = [0.693147, 2.079442, -0.693147].
CISPO_LOGP, CISPO_ADV = [[math.log(2), math.log(8), math.log(0.5)]], [[1.0, 1.0, -1.0]]


def test_cispo_hand_computed_with_the_paper_defaults():
    """Defaults (1, 4): w = clip(rho, 0, 5) = [2, 5, 0.5], token 1's clipped.

    pg_t = -w A u = [-2 * 0.693147, -5 * 2.079442, -0.5 * -1 * -0.693147] = [-1.386294, -10.397208, -0.346574];
    token-mean: -12.130076 / 3 = -4.043359. grad = -w A / 3 = [-0.666667, -1.666667, 0.166667]: token 1
    keeps its gradient, at the capped weight 5. k3 = rho - 1 - u = [0.306853, 4.920558, 0.193147] -> 1.806853.
    """
    logp = t(CISPO_LOGP).requires_grad_()
    loss, stats = cispo_policy_loss(logp, torch.zeros(1, 3, dtype=F64), t(CISPO_ADV), torch.ones(1, 3))
    assert loss.item() == pytest.approx(-4.043359, abs=1e-6)
    assert stats["pg_loss"].item() == pytest.approx(-4.043359, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    assert stats["policy_drift"].item() == pytest.approx(1.806853, abs=1e-6)
    torch.testing.assert_close(grad_of(loss, logp), t([[-2.0, -5.0, 0.5]]) / 3)


def test_cispo_lower_bound():
    # clip_low = 0.2: token 2's weight 0.5 is raised to 0.8: grad -w A / 3 = 0.8 / 3 = 0.266667.
    logp = t(CISPO_LOGP).requires_grad_()
    loss, stats = cispo_policy_loss(logp, torch.zeros(1, 3, dtype=F64), t(CISPO_ADV), torch.ones(1, 3), clip_low=0.2)
    torch.testing.assert_close(grad_of(loss, logp), t([[-2.0, -5.0, 0.8]]) / 3)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)


def test_cispo_keeps_the_gradient_of_clipped_tokens_where_ppo_drops_it():
    batch = random_batch(seed=9)
    logp = batch.pop("logp").requires_grad_()
    cispo, cispo_stats = cispo_policy_loss(logp, **batch, clip_low=0.2, clip_high=0.2)
    ppo, ppo_stats = ppo_policy_loss(logp, **batch, clip_low=0.2, clip_high=0.2)
    live = batch["mask"].bool() & (batch["advantages"] != 0)
    assert cispo_stats["clip_frac"] > 0 and ppo_stats["clip_frac"] > 0
    assert (grad_of(cispo, logp)[live] != 0).all()
    assert (grad_of(ppo, logp)[live] == 0).any()


# --- GMPO ----------------------------------------------------------------------------------

# Sequence 0: A = 1, u = [0.6, -0.2]; sequence 1: A = -2, u = [-0.5, 0.3] and a padding token.
GMPO_LOGP, GMPO_ADV = [[0.6, -0.2, 0.0], [-0.5, 0.3, 7.0]], [[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]]
GMPO_MASK = torch.tensor([[1, 1, 0], [1, 1, 0]])


def test_gmpo_hand_computed_with_the_paper_defaults():
    """Defaults (0.4, 0.4), in log space, one-sided by the sign of A, seq-mean-token-mean.

    Seq 0 (A > 0): cu = [min(0.6, 0.4), -0.2] = [0.4, -0.2] (token 0 clipped), s0 = e^0.1 = 1.105171,
    loss -A s0 = -1.105171. Seq 1 (A < 0): cu = [max(-0.5, -0.4), 0.3] = [-0.4, 0.3] (token 0 clipped),
    s1 = e^-0.05 = 0.951229, loss 2 s1 = 1.902459. Mean over sequences: 0.398644. Gradient on the unclipped
    tokens -A s / L / 2 sequences: seq 0 -1.105171 / 4 = -0.276293, seq 1 2 * 0.951229 / 4 = 0.475615.
    clip_frac 2 / 4; k3 of u = [0.222119, 0.018731, 0.106531, 0.049859] -> 0.099310.
    """
    logp = t(GMPO_LOGP).requires_grad_()
    loss, stats = gmpo_policy_loss(logp, torch.zeros(2, 3, dtype=F64), t(GMPO_ADV), GMPO_MASK)
    assert loss.item() == pytest.approx(0.398644, abs=1e-6)
    assert stats["clip_frac"].item() == 0.5
    assert stats["policy_drift"].item() == pytest.approx(0.099310, abs=1e-6)
    expected = t([[0.0, -0.276293, 0.0], [0.0, 0.475615, 0.0]])
    torch.testing.assert_close(grad_of(loss, logp), expected, atol=1e-6, rtol=0)


def test_gmpo_importance_weights_are_one_per_sequence():
    """The geometric mean of each sequence's token weights: seq 0 [2, 0.5] -> 1, seq 1 [4, 1] -> 2 (its
    padding's weight is 0, as `importance_weights` gives it): (-1.105171 + 2 * 1.902459) / 2 = 1.349873, seq 1's
    gradient doubled to 0.951229. A token weighed 0 (masked by mis) drops its sequence: seq 0 alone then,
    1.902459 / 2 = 0.951229, without NaN."""
    logp = t(GMPO_LOGP).requires_grad_()
    batch = {"old_logp": torch.zeros(2, 3, dtype=F64), "advantages": t(GMPO_ADV), "mask": GMPO_MASK}
    loss, _ = gmpo_policy_loss(logp, **batch, is_weights=t([[2.0, 0.5, 0.0], [4.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(1.349873, abs=1e-6)
    expected = t([[0.0, -0.276293, 0.0], [0.0, 0.951229, 0.0]])
    torch.testing.assert_close(grad_of(loss, logp), expected, atol=1e-6, rtol=0)
    loss, _ = gmpo_policy_loss(logp, **batch, is_weights=t([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.951229, abs=1e-6)
    assert torch.isfinite(grad_of(loss, logp)).all()


@pytest.mark.parametrize("mode", AGG_MODES)
def test_gmpo_against_finite_differences(mode):
    batch = random_batch(seed=10)
    batch["advantages"] = batch["advantages"][:, :1].expand_as(batch["logp"])  # one advantage per sequence
    logp = batch.pop("logp").requires_grad_()
    assert gradcheck(lambda logp: gmpo_policy_loss(logp, **batch, agg_mode=mode, max_len=MAX_LEN)[0], (logp,))


# --- importance weights in every policy loss ------------------------------------------------


@pytest.mark.parametrize("loss_fn", TOKEN_LEVEL_LOSS_FNS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_is_weights_multiply_each_token_loss_before_aggregation(loss_fn, mode):
    """Each token's gradient is scaled by its weight; the weights themselves get no gradient."""
    batch = random_batch(seed=7)
    logp = batch["logp"].requires_grad_()
    weights = 0.2 + 2 * torch.rand(batch["logp"].shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    weights.requires_grad_()
    plain, _ = loss_fn(**batch, agg_mode=mode, max_len=MAX_LEN)
    weighted, _ = loss_fn(**batch, agg_mode=mode, max_len=MAX_LEN, is_weights=weights)
    (plain_grad,) = torch.autograd.grad(plain, logp)
    weighted_grad, weights_grad = torch.autograd.grad(weighted, [logp, weights], allow_unused=True)
    valid = batch["mask"].bool()
    assert plain_grad[valid].abs().max() > 0
    torch.testing.assert_close(weighted_grad, weights.detach() * plain_grad, atol=1e-12, rtol=0)
    assert weights_grad is None  # detached inside the loss


# --- value loss and KL ---------------------------------------------------------------------


def test_value_loss_hand_computed():
    # eps_v = 0.2, V = [1, 2, 2], V_old = [0.9, 1.5, 1.5], G = [1.5, 1, 3]:
    # t0: clip(1, 0.7, 1.1) = 1: 0.5 * max(0.25, 0.25) = 0.125, grad V - G = -0.5
    # t1: clip(2, 1.3, 1.7) = 1.7: 0.5 * max(1, 0.49) = 0.5 (unclipped), grad 1
    # t2: clipped V 1.7: 0.5 * max(1, 1.69) = 0.845 (clipped), grad 0
    # loss = (0.125 + 0.5 + 0.845) / 3 = 0.49; grad / 3 = [-0.166667, 0.333333, 0]; clip_frac 1 / 3
    # (a fourth, masked token would be clipped: V = 5, V_old = 0, G = 10).
    values = t([[1.0, 2.0, 2.0, 5.0]]).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, t([[0.9, 1.5, 1.5, 0.0]]), t([[1.5, 1.0, 3.0, 10.0]]), mask)
    assert loss.item() == pytest.approx(0.49)
    assert stats["value_loss"].item() == pytest.approx(0.49)
    assert stats["value_clip_frac"].item() == pytest.approx(1 / 3)
    torch.testing.assert_close(grad_of(loss, values), t([[-0.5, 1.0, 0.0, 0.0]]) / 3)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_value_loss_against_finite_differences(mode):
    batch = random_batch(seed=4)
    old_values, returns = batch["old_logp"], batch["advantages"]
    values = (old_values + 0.5 * torch.randn(old_values.shape, dtype=F64)).requires_grad_()

    def loss(values):
        return value_loss(values, old_values, returns, batch["mask"], agg_mode=mode, max_len=MAX_LEN)[0]

    assert gradcheck(loss, (values,))
    assert value_loss(values, old_values, returns, batch["mask"])[1]["value_clip_frac"] > 0


def test_kl_penalty_hand_computed():
    # logp = -1, ref = -1.5, d = logp - ref = 0.5: k3 = e^-0.5 - (-0.5) - 1 = 0.606531 + 0.5 - 1 = 0.106531
    logp, ref_logp = t([-1.0]), t([-1.5])
    assert kl_penalty(logp, ref_logp).item() == pytest.approx(0.106531, abs=1e-6)
    # k3 is clamped to 10: e^20 + ... for d = -20, and e^-20 + 20 - 1 = 19 for d = 20.
    assert torch.equal(kl_penalty(t([-20.0, 0.0]), t([0.0, -20.0])), t([10.0, 10.0]))


def test_kl_penalty_against_finite_differences():
    logp = t([-1.0, -0.2, -3.0, -20.0]).requires_grad_()
    ref_logp = t([-1.5, -0.4, -1.0, 0.0])  # the last token is in k3's clamp
    assert gradcheck(lambda logp: kl_penalty(logp, ref_logp), (logp,))


# --- micro-batches, stats, registries ------------------------------------------------------


@pytest.mark.parametrize("split", [(2, 4), (1, 2, 3), (3, 1, 1, 1)])
@pytest.mark.parametrize("loss_name", ["ppo_clip", "cpgd", "cispo", "gmpo", "value"])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_accumulation_is_exact(mode, loss_name, split):
    """Micro-batches, each cut to its own longest sequence and weighted by units / total units,
    give the whole mini-batch's loss and gradient."""
    batch = random_batch(seed=5)
    leaf = batch["logp"].requires_grad_()

    def loss(rows: slice) -> torch.Tensor:
        length = max(1, max(LENGTHS[rows]))  # the micro-batch's own padding
        part = {key: value[rows, :length] for key, value in batch.items()}
        if loss_name == "value":
            args = (part["logp"], part["old_logp"], part["advantages"], part["mask"])
            return value_loss(*args, agg_mode=mode, max_len=MAX_LEN)[0]
        return POLICY_LOSSES[loss_name](**part, agg_mode=mode, max_len=MAX_LEN)[0]

    whole = loss(slice(None))
    total_units = aggregation_units(batch["mask"], mode)
    starts = torch.tensor((0, *split)).cumsum(0).tolist()
    accumulated = sum(
        loss(slice(start, end)) * aggregation_units(batch["mask"][start:end], mode) / total_units
        for start, end in itertools.pairwise(starts)
    )
    torch.testing.assert_close(accumulated, whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_of(accumulated, leaf), grad_of(whole, leaf), atol=1e-12, rtol=0)


def test_stats_are_detached_0_dim_tensors():
    batch = random_batch(seed=6)
    batch["logp"].requires_grad_()
    results = {
        **{loss_fn: loss_fn(**batch) for loss_fn in POLICY_LOSS_FNS},
        value_loss: value_loss(batch["logp"], batch["old_logp"], batch["advantages"], batch["mask"]),
    }
    for loss_fn, (loss, stats) in results.items():
        assert loss.requires_grad
        for value in stats.values():
            assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
        assert set(stats) == set(declared_stats(loss_fn))  # what the learner reduces (declare_stats)
    assert declared_stats(ppo_policy_loss) == {
        "pg_loss": "loss",
        "clip_frac": "token_mean",
        "policy_drift": "token_mean",
    }
    assert declared_stats(value_loss) == {"value_loss": "loss", "value_clip_frac": "token_mean"}


def test_a_function_without_declared_stats_is_refused():
    with pytest.raises(TypeError, match="declare_stats"):
        declared_stats(lambda logp, old_logp, advantages, mask, **_: (logp.sum(), {}))
    with pytest.raises(ValueError, match="reduction of the stat 'drift_loss'"):
        declare_stats(drift_loss="mean")


def test_policy_loss_registry():
    assert POLICY_LOSSES == {
        "ppo_clip": ppo_policy_loss,
        "cpgd": cpgd_policy_loss,
        "gspo": gspo_policy_loss,
        "cispo": cispo_policy_loss,
        "gmpo": gmpo_policy_loss,
    }
