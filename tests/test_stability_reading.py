"""How the stability map's runs are read: the paper's claim per cell (benchmark/stability_map.py) and the
sentinel's replay over the map (benchmark/sentinel.py --replay_map). Pure functions on made-up runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmark"))  # as the benchmarks run
import sentinel as sentinel_bench  # noqa: E402
import stability_map  # noqa: E402

STEPS = 15


def run(collapse: int | None = None, crashed: bool = False, accuracy: float = 0.75, drift: float = 0.01) -> dict:
    """A map run: its reward collapses at step `collapse` (1-based), its drift is `drift` at every step."""
    reward = [0.2 + 0.04 * i for i in range(STEPS)]
    if collapse is not None:
        reward[collapse - 1 :] = [0.0] * (STEPS - collapse + 1)
    return {
        "crashed": crashed,
        "accuracy_before": 0.0,
        "accuracy_after": accuracy,
        "collapse_step": {"reward": collapse, "entropy": None, "length": None},
        "reward": reward,
        "entropy": [0.3] * STEPS,
        "response_len": [6.0] * STEPS,
        "policy_drift": [drift] * STEPS,
        "grad_norm": [1.0] * STEPS,
        "logprob_gap_actor_learner": [1e-12] * STEPS,
        "is_weight_max": [1.0] * STEPS,
    }


def test_claim_verdict_needs_a_collapse_to_test_anything():
    stable = [run(), run(), run()]
    assert stability_map.claim_verdict(stable, {"grpo": stable, "rloo": stable}).startswith("no collapse")


def test_claim_verdict_supports_only_when_cpgd_collapses_less_than_every_baseline():
    cpgd = [run(), run(), run(collapse=9)]
    worse = [run(collapse=4), run(collapse=5), run()]
    assert stability_map.claim_verdict(cpgd, {"grpo": worse, "rloo": worse}) == "supports"
    as_often = [run(), run(), run(collapse=3)]
    assert stability_map.claim_verdict(cpgd, {"grpo": worse, "rloo": as_often}).startswith("neither")
    assert stability_map.claim_verdict(worse, {"grpo": cpgd, "rloo": as_often}) == "against"


def test_claim_verdict_compares_shares_of_seeds_in_a_map_being_built():
    two_of_two = [run(collapse=6), run(collapse=7)]
    three_of_three = [run(collapse=3), run(collapse=4), run(collapse=5)]
    assert stability_map.claim_verdict(two_of_two, {"grpo": three_of_three}).startswith("neither: all collapse")
    one_of_two = [run(collapse=6), run()]
    two_of_three = [run(collapse=3), run(collapse=4), run()]
    assert stability_map.claim_verdict(one_of_two, {"grpo": two_of_three}) == "supports"


def test_claim_verdict_counts_a_crash_as_a_collapse():
    cpgd = [run(), run(), run()]
    crashed = [run(crashed=True), run(), run()]
    assert stability_map.claim_verdict(cpgd, {"grpo": crashed}) == "supports"
    assert stability_map.claim_verdict(crashed, {"grpo": cpgd}) == "against"


def test_claim_verdict_compares_collapse_steps_when_every_seed_collapses():
    late = [run(collapse=10), run(collapse=9), run(collapse=11)]
    early = [run(collapse=3), run(collapse=4), run(collapse=6)]
    assert "CPGD later (median step 10 against 4)" in stability_map.claim_verdict(late, {"a": early, "b": early})
    assert "not later" in stability_map.claim_verdict(early, {"a": late, "b": early})


def test_replay_fires_on_the_trust_region_at_the_step_it_is_crossed():
    quiet = run(drift=0.05)
    assert sentinel_bench.first_alarm(quiet, 0.1) is None
    crossing = run(drift=0.05)
    crossing["policy_drift"][6] = 0.15
    alarm = sentinel_bench.first_alarm(crossing, 0.1)
    assert alarm is not None and alarm["step"] == 7 and alarm["signal"].startswith("policy drift beyond")
    assert sentinel_bench.first_alarm(crossing, 0.2) is None  # a wider one lets it pass: 3x is no relative jump
    crossing["policy_drift"][6] = 1.0  # 20x its steady history: the relative signal fires without a trust region
    assert sentinel_bench.first_alarm(crossing, 0.0) == {"step": 7, "signal": "policy drift", "value": 1.0}


def test_replay_sees_the_reward_fall_without_a_trust_region():
    falling = run(collapse=12)
    alarm = sentinel_bench.first_alarm(falling, 0.0)
    assert alarm == {"step": 12, "signal": "reward", "value": 0.0}


@pytest.mark.parametrize(
    ("map_run", "alarm_step", "expected"),
    [
        (run(collapse=8), 8, "caught"),
        (run(collapse=8), 1, "caught"),
        (run(collapse=8), 9, "late"),
        (run(collapse=8), None, "missed"),
        (run(crashed=True, accuracy=0.0), STEPS, "caught"),  # a crash counts as collapsing after the last step
        (run(), None, "quiet"),
        (run(accuracy=0.75), 3, "false"),  # the run learned: the alarm would have stopped a good run
        (run(accuracy=0.30), 3, "doubtful"),  # it learned less: the alarm may be right
    ],
)
def test_replay_verdicts(map_run, alarm_step, expected):
    alarm = None if alarm_step is None else {"step": alarm_step, "signal": "x", "value": 1.0}
    assert sentinel_bench.verdict(map_run, alarm) == expected
