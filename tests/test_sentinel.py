"""The sentinel (--sentinel): its signals on made-up histories, and, through the real loop on the demo's task,
three injected faults caught, rolled back and recovered from, and a rollback without remedy that replays
the collapse exactly."""

import json
import math

import pytest

from oat_cpgd.sentinel import MIN_HISTORY, Course, Sentinel

K, WINDOW, KL_FLOOR = 8.0, 10, 5e-7  # the defaults; the KL of the fp32 sync check's tolerance


def healthy(step: int, **changes) -> dict[str, float]:
    """A step's metrics with a little noise (which must never fire), then `changes`."""
    wobble = 1 + 0.05 * math.sin(step)
    metrics = {
        "train/logprob_gap_actor_learner": 1e-6 * wobble,
        "train/is_weight_max": 1.002 * wobble,
        "train/policy_drift": 0.004 * wobble,
        "train/grad_norm": 0.8 * wobble,
        "train/entropy": 0.5 * wobble,
        "train/response_len": 7.0 * wobble,
        "actor/reward_mean": min(0.25 + 0.05 * step, 0.9) + 0.03 * math.sin(3 * step),
        "train/skipped_steps": 0.0,
        "misc/step_time": float("nan"),  # not what a step computed: never watched
    }
    return {**metrics, **changes}


def watched(steps: int) -> Sentinel:
    sentinel = Sentinel(K, WINDOW, KL_FLOOR)
    for step in range(1, steps + 1):
        assert sentinel.check(step, healthy(step)) is None, step
    return sentinel


def test_steady_noise_and_a_steady_trend_never_fire():
    sentinel = watched(40)  # the reward rises from 0.25 to 0.9, and every signal wobbles by 5%
    assert len(sentinel.history) == 40
    # The entropy halving over 20 steps is a trend the running median follows, not a collapse.
    for step in range(41, 61):
        assert sentinel.check(step, healthy(step, **{"train/entropy": 0.5 * 0.966 ** (step - 40)})) is None


@pytest.mark.parametrize(
    ("key", "value", "signal"),
    [
        ("train/logprob_gap_actor_learner", 1e-3, "actor-learner KL"),  # stale weights: 1000 x the usual gap
        ("train/is_weight_max", 40.0, "importance-weight max"),
        ("train/policy_drift", 0.2, "policy drift"),
        ("train/grad_norm", 30.0, "gradient norm"),
        ("train/entropy", 0.02, "entropy"),  # collapsing to greedy
        ("train/entropy", 10.0, "entropy"),  # turning to noise
        ("train/response_len", 0.5, "response length"),  # emptied
        ("train/response_len", 100.0, "response length"),  # rambling
        ("actor/reward_mean", -0.9, "reward"),  # a reward flipped in sign
        ("actor/reward_mean", 0.05, "reward"),
    ],
)
def test_each_signal_fires_in_the_direction_of_a_collapse(key, value, signal):
    sentinel = watched(20)
    alarm = sentinel.check(21, healthy(21, **{key: value}))
    assert alarm is not None and (alarm.signal, alarm.key, alarm.value, alarm.step) == (signal, key, value, 21)
    assert str(value)[:3] in alarm.text() or f"{value:.4g}" in alarm.text()
    assert len(sentinel.history) == 20  # the alarming step does not join the history


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train/policy_drift", 1e-5),  # less drift is no collapse
        ("train/grad_norm", 0.1),
        ("train/logprob_gap_actor_learner", 1e-9),
        ("actor/reward_mean", 0.99),
        ("train/entropy", 0.1),  # within a factor exp(8 x 0.3) = 11 of the median either way
        ("train/response_len", 11.0),
    ],
)
def test_a_move_away_from_collapse_or_within_the_band_does_not_fire(key, value):
    assert watched(20).check(21, healthy(21, **{key: value})) is None


def test_a_fall_that_keeps_half_the_peak_does_not_fire():
    sentinel = watched(20)  # reward peak 0.9 - 0.93
    assert sentinel.check(21, healthy(21, **{"actor/reward_mean": 0.5})) is None
    alarm = sentinel.check(22, healthy(22, **{"actor/reward_mean": 0.2}))
    assert alarm.signal == "reward" and "its running peak: 0.9" in alarm.text()


def test_relative_signals_wait_for_a_history_but_non_finite_values_fire_at_once():
    sentinel = Sentinel(K, WINDOW, KL_FLOOR)
    for step in range(1, MIN_HISTORY + 1):
        assert sentinel.check(step, healthy(step, **({"train/grad_norm": 1e3} if step == 3 else {}))) is None
    nan = Sentinel(K, WINDOW, KL_FLOOR).check(1, healthy(1, **{"train/policy_drift": float("nan")}))
    assert (nan.signal, nan.key) == ("non-finite value", "train/policy_drift")
    skipped = Sentinel(K, WINDOW, KL_FLOOR).check(1, healthy(1, **{"train/skipped_steps": 1.0}))
    assert skipped.key == "train/skipped_steps"


def test_a_drift_beyond_the_trust_region_fires_from_the_first_step():
    """A run whose updates are too large from its first step (the stability benchmark's 16 updates at lr 1e-3
    drift 0.3-1.8 nats per token at step 1) has no healthy history to be measured against."""
    alarm = Sentinel(K, WINDOW, KL_FLOOR, max_drift=0.1).check(1, healthy(1, **{"train/policy_drift": 1.75}))
    assert (alarm.signal, alarm.value, alarm.limit) == ("policy drift beyond the trust region", 1.75, 0.1)
    assert "above 0.1" in alarm.text()
    assert Sentinel(K, WINDOW, KL_FLOOR, max_drift=0.0).check(1, healthy(1, **{"train/policy_drift": 1.75})) is None
    assert Sentinel(K, WINDOW, KL_FLOOR, max_drift=0.1).check(1, healthy(1, **{"train/policy_drift": 0.09})) is None


def test_the_history_is_a_window_of_recent_healthy_steps():
    sentinel = watched(20)
    # A gradient norm that grows by 15% a step for 20 steps (16 x in all) is followed by the window's
    # median; measured against all 40 steps, the last would be 10 x their median and fire.
    grown = {step: 0.8 * 1.15 ** (step - 20) for step in range(21, 41)}
    for step, norm in grown.items():
        assert sentinel.check(step, healthy(step, **{"train/grad_norm": norm})) is None, step
    everything = Sentinel(K, 40, KL_FLOOR)
    everything.history = list(sentinel.history)
    assert everything.check(41, healthy(41, **{"train/grad_norm": grown[40] * 1.15})) is not None
    assert sentinel.check(41, healthy(41, **{"train/grad_norm": grown[40] * 1.15})) is None
    # A rollback forgets what came after its step.
    sentinel.forget_after(25)
    assert [s for s, _ in sentinel.history] == list(range(1, 26))


def test_a_course_is_saved_and_restored_with_a_checkpoint():
    course = Course(rollbacks=2, lr_factor=0.25, prompt_offset=7, alarms=["x"])
    again = Course.from_state(json.loads(json.dumps({"step": 9, **course.state()})))
    assert (again.rollbacks, again.lr_factor, again.prompt_offset, again.alarms) == (2, 0.25, 7, [])
    assert Course.from_state({"step": 3}) == Course()  # a checkpoint saved without the sentinel


# ---------------------------------------------------------------------------------------------- real runs
def demo_args(tmp_path, name: str, max_steps: int, *extra: str):
    """The demo's run (its warm start, task and flags), held-out accuracy at step 0 and at the end."""
    from oat_cpgd.args import CPGDArgs
    from oat_cpgd.cli import parse_args
    from oat_cpgd.experiment import demo

    train, held_out = demo.split_questions()
    data = demo.write_splits(tmp_path / "data", train, held_out)
    flags = demo.cpgd_flags(demo.warm_start(train), data, 0, max_steps, tmp_path)
    return parse_args(
        CPGDArgs, argv=[*flags, f"--wb_run_name={name}", f"--eval_steps={max_steps}", "--sentinel", *extra]
    )


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_three_injected_faults_are_caught_rolled_back_and_recovered_from(ray_cluster, tmp_path):
    """An LR spike (step 7), a reward flipped in sign for one step (12) and an actor sampling from stale
    weights (17), each once: each is caught at its step or the next, the run goes back to a rollback point
    from before it, and ends its 20 steps with the held-out accuracy the demo reaches without faults."""
    from support.sentinel_faults import FLIP_STEP, SPIKE_STEP, STALE_STEP, FaultyActor, SpikedOnceLearner

    from oat_cpgd.interface import run

    run_dir = run(demo_args(tmp_path, "faults", 20), learner_cls=SpikedOnceLearner, actor_cls=FaultyActor)
    alarms = read_jsonl(run_dir / "sentinel.jsonl")
    assert len(alarms) == 3, alarms
    for alarm, fault_step in zip(alarms, (SPIKE_STEP, FLIP_STEP, STALE_STEP), strict=True):
        assert fault_step <= alarm["step"] <= fault_step + 1, alarm
        assert alarm["back_to"] <= alarm["step"] - 2
    assert alarms[1]["signal"] == "reward" and alarms[1]["value"] < 0  # the flipped step itself
    assert alarms[2]["key"] in ("train/logprob_gap_actor_learner", "train/is_weight_max")  # the stale rollout
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [row["step"] for row in rows if "actor/reward_mean" in row]
    assert steps == list(range(1, 21))  # every step once: what was rolled back was forgotten
    by_step = {row["step"]: row for row in rows if "actor/reward_mean" in row}
    for n, alarm in enumerate(alarms, start=1):  # the rollbacks so far, from the first step replayed on
        assert by_step[alarm["back_to"] + 1]["misc/rollbacks"] == n and not alarm["stopped"]
    assert by_step[20]["misc/rollbacks"] == 3
    # The LR remedy: halved at each rollback.
    assert rows[-1]["train/lr"] == pytest.approx(1e-4 * 0.5**3)
    accuracy = [row["eval/test/accuracy"] for row in rows if "eval/test/accuracy" in row]
    assert accuracy[0] < 0.05 and accuracy[-1] >= 0.5, accuracy
    assert min(row["actor/reward_mean"] for row in rows[-3:]) >= 0.6


@pytest.mark.slow
def test_a_rollback_without_remedy_replays_the_same_collapse(ray_cluster, tmp_path):
    """With seeded sampling and no remedy, the steps replayed from the rollback point are the steps first
    run: the LR spike of step 7 (every time it is learned) fires the same alarm on the same metrics, bit
    for bit. The second alarm is one more than --max_rollbacks 1 allows: the run stops, naming both."""
    from support.sentinel_faults import SPIKE_STEP, SpikedLearner

    from oat_cpgd.interface import run
    from oat_cpgd.sentinel import SentinelGaveUp

    args = demo_args(tmp_path, "replay", 12, "--sentinel_remedy=none", "--max_rollbacks=1")
    with pytest.raises(SentinelGaveUp, match="--max_rollbacks 1 are spent") as stopped:
        run(args, learner_cls=SpikedLearner)
    first, second = read_jsonl(tmp_path / "replay" / "sentinel.jsonl")
    assert first["step"] in (SPIKE_STEP, SPIKE_STEP + 1) and first["back_to"] == second["back_to"]
    assert (first["stopped"], second["stopped"]) == (False, True)
    assert str(stopped.value).count(f"step {first['step']}'s {first['signal']}") == 2

    def computed(metrics: dict) -> dict:  # what the step computed, not how long it took
        return {k: v for k, v in metrics.items() if k.startswith(("train/", "actor/")) and "time" not in k
                and "per_s" not in k}  # fmt: skip

    assert computed(first["metrics"]) == computed(second["metrics"])
    assert {k: first[k] for k in ("step", "key", "value", "limit")} == {
        k: second[k] for k in ("step", "key", "value", "limit")
    }
