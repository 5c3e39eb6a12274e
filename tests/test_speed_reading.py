"""How the speed benchmarks read what they measure: benchmark/step_time.py's settings and its ranking
against TRL, benchmark/scaling.py's phases and slopes. Pure functions on made-up runs."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmark"))  # as the benchmarks run
import scaling  # noqa: E402
import step_time  # noqa: E402


def test_trl_settings_default_to_trls_own_defaults():
    setting = step_time.Setting.parse("trl:")
    assert (setting.micro_batch, setting.gradient_checkpointing) == (8, True)
    assert setting == step_time.Setting.parse(step_time.TRL_DEFAULTS) == step_time.Setting("trl", 8, True)
    assert setting.text == step_time.TRL_DEFAULTS  # so "trl:" is read as TRL's defaults in the table


def test_oat_settings_default_to_its_flags_defaults():
    setting = step_time.Setting.parse("oat:mb=64,async,pc=off")
    assert setting.micro_batch == 64 and setting.asynchronous and not setting.prefix_caching
    assert not setting.gradient_checkpointing  # run_grpo's --gradient_checkpointing is off by default
    assert step_time.Setting.parse("oat:gc=on").gradient_checkpointing
    assert setting.text == "oat:mb=64,gc=off,async,pc=off"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("trl:mb=7", "divide"),  # 64 responses a step
        ("trl:async", "not a setting of trl"),
        ("oat:gen=vllm", "not a setting of oat"),
        ("trl:pc=off", "not a setting of trl"),
        ("oat:gc=yes", "on or off"),
        ("verl:mb=8", "trl: or oat:"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(text, names):
    with pytest.raises(ValueError, match=names):
        step_time.Setting.parse(text)


def row(seconds: float) -> dict:
    return {
        "s_per_step": seconds, "generate": seconds / 2, "learn": seconds / 2, "sync": 0.0, "check": None,
        "reward_first": 0.1, "reward_last": 0.5, "length": 32.0,
    }  # fmt: skip


def test_the_headline_compares_the_best_of_each_trainer(capsys):
    table = {
        step_time.TRL_DEFAULTS: row(4.0),
        "trl:mb=64,gc=off": row(3.0),
        "oat:mb=8": row(2.0),
        "oat:mb=64": row(1.5),
    }
    step_time.print_table(table, steps=10, rounds=1, warmup=2)
    out = capsys.readouterr().out
    assert "oat_cpgd's best (oat:mb=64) is 2.00x TRL's best (trl:mb=64,gc=off)" in out
    oat64 = next(line for line in out.splitlines() if line.startswith("oat:mb=64 "))
    assert oat64.split()[-2:] == ["2.67x", "2.00x"]  # against TRL's defaults, against TRL's best


def test_the_exponent_is_the_power_of_the_growth():
    xs = [4.0, 8.0, 16.0]
    assert scaling.exponent(xs, [x**2 * 0.1 for x in xs]) == pytest.approx(2.0)
    assert scaling.exponent(xs, [3.0 + 0 * x for x in xs]) == pytest.approx(0.0)
    assert scaling.exponent([8.0, 8.0], [1.0, 2.0]) is None  # one x: no slope
    assert [scaling.growth(b) for b in (0.5, 1.0, 1.3, None)] == ["sublinear", "linear", "worse than linear", "-"]


def scaling_run(steps: int, engine: float, learn: float) -> dict:
    """A run's per-step series as step_time.run_oat returns them: a first slow step, then steady ones."""
    first = [2 * engine] + [engine] * (steps - 1)
    return {
        "step": [e + 0.1 + learn + 0.05 + 0.2 for e in first],
        "generate": [e + 0.1 for e in first],  # the rollout: the engine, scoring 0.04, transfer 0.06
        "engine": first,
        "score": [0.04] * steps,
        "learn": [learn] * steps,
        "sync": [0.05] * steps,
        "check": [0.0] * steps,
    }


def test_phases_split_the_step_and_leave_the_rest_as_other():
    seconds = scaling.phases(scaling_run(5, engine=1.0, learn=2.0), warmup=1)
    assert seconds["step"] == pytest.approx(3.35)
    assert seconds["transfer"] == pytest.approx(0.06) and seconds["score"] == pytest.approx(0.04)
    assert seconds["other"] == pytest.approx(0.2)
    assert sum(seconds[name] for name in scaling.PHASES) == pytest.approx(seconds["step"])


def test_the_fastest_growing_phase_is_named_among_those_that_weigh():
    points = []
    for k in (4, 8, 16):
        seconds = scaling.phases(scaling_run(4, engine=0.1 * k, learn=0.05 * k**1.5), warmup=1)
        seconds["check"] = 0.00001 * k**3  # grows fastest, but under 5% of the largest step
        points.append({"axis": "samples", "config": {"samples": k}, "seconds": seconds})
    fit = scaling.slopes(points)
    assert fit["learn"] == pytest.approx(1.5) and fit["generate"] == pytest.approx(1.0)
    assert fit["check"] == pytest.approx(3.0) and fit["fastest"] == "learn"


def test_the_length_axis_is_read_against_the_length_generated():
    point = {"axis": "length", "config": scaling.point_config("length", 512), "response_len": 187.5}
    assert scaling.x_of(point) == 187.5
    assert point["config"] == {"model": "smollm2", "samples": 8, "new_tokens": 512, "ranks": 1, "micro_batch": 8}


def test_no_phase_is_named_as_growing_when_every_phase_shrinks():
    points = [
        {
            "axis": "ranks",
            "config": {"ranks": ranks},
            "seconds": scaling.phases(scaling_run(4, 1.0 / ranks, 2.0 / ranks), 1),
        }
        for ranks in (1, 2)
    ]
    fit = scaling.slopes(points)
    assert fit["learn"] < 0 and fit["generate"] < 0 and fit["fastest"] is None


def test_each_model_runs_its_own_defaults_unless_a_flag_is_given():
    options = argparse.Namespace(model=["tiny", "smollm2"], settings=None, new_tokens=None, steps=4, rounds=None)
    options.warmup = None
    smollm2 = step_time.plan("smollm2", options)
    assert (smollm2["new_tokens"], smollm2["steps"]) == (64, 4)  # its own length, the flag's steps
    assert smollm2["settings"] == step_time.MODEL_DEFAULTS["smollm2"]["settings"]
    options.settings = ["oat:mb=16"]
    assert step_time.plan("tiny", options)["settings"] == ["oat:mb=16"]
    assert step_time.plan("/models/mine", options)["new_tokens"] == step_time.MODEL_DEFAULTS["tiny"]["new_tokens"]
    for defaults in step_time.MODEL_DEFAULTS.values():  # every default setting parses, TRL's defaults among them
        assert step_time.TRL_DEFAULTS in [step_time.Setting.parse(text).text for text in defaults["settings"]]


def test_a_failed_trainer_is_named_by_its_signal_or_exit_status():
    assert step_time.failure(-signal.SIGKILL) == "killed by SIGKILL, out of memory?"
    assert step_time.failure(-signal.SIGTERM) == "killed by SIGTERM"
    assert step_time.failure(1) == "exit status 1"


def test_a_configuration_on_two_axes_is_run_once():
    smollm2_64 = scaling.point_config("model", "smollm2")
    assert smollm2_64 == scaling.point_config("length", 64)  # SmolLM2, 64 tokens, K 8, micro-batch 8
    measured = {"axis": "length", "value": 64, "config": scaling.point_config("length", 64), "seconds": {}}
    other = {"axis": "length", "value": 32, "config": scaling.point_config("length", 32), "seconds": {}}
    assert scaling.same_run([other, measured], smollm2_64) is measured
    assert scaling.same_run([other, measured], scaling.point_config("model", "tiny")) is None


def test_what_is_above_the_floor_is_each_phase_beyond_its_bare_part():
    step = row(10.0) | {"generate": 4.0, "engine": 3.0, "score": 0.25, "learn": 5.0, "sync": 0.5, "check": 0.1}
    parts = step_time.above_floor(step, {"generate": 2.5, "train": 4.0})
    assert parts["generation (engine - bare vLLM generate)"] == pytest.approx(0.5)
    assert parts["transfer (Ray, batching in the rollout)"] == pytest.approx(0.75)  # rollout - engine - score
    assert parts["learn (learner - bare DeepSpeed train)"] == pytest.approx(1.0)
    assert parts["rest of the step"] == pytest.approx(0.4)  # 10 - 4 - 5 - 0.5 - 0.1
    assert sum(parts.values()) == pytest.approx(10.0 - 2.5 - 4.0)  # the parts add up to the gap


def test_the_first_and_last_rewards_never_overlap():
    run = {name: [1.0] * 5 for name in ("step", "generate", "learn", "sync", "check", "length")}
    run |= {"reward": [0.0, 0.0, 0.5, 1.0, 1.0], "wall": 9.0, "threads": 2}
    row = step_time.summary([run], warmup=1)
    assert (row["reward_first"], row["reward_last"]) == (0.0, 1.0)  # steps 1-2 and 4-5 of a 5-step run
    assert step_time.ends([0.0] * 30) == 5 and step_time.ends([0.0]) == 1
