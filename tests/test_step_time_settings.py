"""How benchmark/step_time.py reads its settings and ranks them against TRL. Pure functions, no runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmark"))  # as the benchmarks run
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
