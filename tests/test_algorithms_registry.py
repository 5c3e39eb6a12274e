"""The algorithm registry: every entry resolves, the flags follow it, a new entry needs no other edit."""

import typing

import pytest

from oat_cpgd.algorithms import ADVANTAGE_ESTIMATORS, AGG_MODES, ALGORITHMS, POLICY_LOSSES, Algorithm, get_algorithm
from oat_cpgd.args import CPGDArgs, PPOArgs
from oat_cpgd.cli import parse_args


def resolved(args_cls=PPOArgs, **flags):
    args = args_cls(**{"num_samples": 4, "rollout_batch_size": 4, "train_batch_size": 8, **flags})
    args.resolve()
    return args


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_entry_resolves_with_the_cpgd_flags(name):
    algorithm = get_algorithm(name)
    args = resolved(CPGDArgs, critic_type=name)
    assert algorithm.advantage_estimator(args) in ADVANTAGE_ESTIMATORS
    assert algorithm.policy_loss in POLICY_LOSSES and algorithm.agg_mode in AGG_MODES
    assert (args.loss_agg_mode, args.clip_low, args.clip_high) == (algorithm.agg_mode, *algorithm.clip)


def test_critic_type_choices_are_the_registry():
    choices = typing.get_args(typing.get_type_hints(PPOArgs)["critic_type"])
    assert choices == tuple(ALGORITHMS)
    assert {"ppo", "grpo", "drgrpo", "cpgd", "rloo", "reinforce_pp_baseline", "gspo"} <= set(ALGORITHMS)


def test_entries_say_what_the_algorithms_are():
    assert get_algorithm("ppo").needs_critic and get_algorithm("ppo").shuffle_minibatches
    assert not any(
        get_algorithm(n).needs_critic or get_algorithm(n).shuffle_minibatches for n in ALGORITHMS if n != "ppo"
    )
    assert get_algorithm("reinforce_pp_baseline").whiten_advantages
    assert (
        get_algorithm("cpgd").advantage_estimator(resolved(CPGDArgs, cpgd_weight="clip_filter")) == "cpgd_clip_filter"
    )
    assert get_algorithm("cpgd").loss_options(resolved(CPGDArgs, policy_drift_coeff=0.5)) == {
        "drift_coef": 0.5,
        "drift_clip": 2.0,
    }
    assert get_algorithm("gspo").clip == (3e-4, 4e-4) and get_algorithm("gspo").policy_loss == "gspo"


def test_explicit_flags_beat_the_entry_defaults():
    args = resolved(critic_type="gspo", clip_high=0.01, loss_agg_mode="token-mean")
    assert (args.clip_low, args.clip_high, args.loss_agg_mode) == (3e-4, 0.01, "token-mean")


def test_an_entry_whose_flags_the_class_lacks_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(PPOArgs, argv=["--critic_type", "cpgd"])
    err = capsys.readouterr().err
    assert "--policy_drift_coeff" in err and "run_cpgd" in err


def test_a_new_entry_needs_no_edit_elsewhere(monkeypatch):
    """Registered at run time (the learner is checked with it in tests/test_learner.py)."""
    monkeypatch.setitem(ALGORITHMS, "reinforce", Algorithm("dr_grpo", "ppo_clip", "token-mean", clip=(0.1, 0.1)))
    args = resolved(critic_type="reinforce")
    assert (args.agg_mode, args.clip_low, args.needs_reference) == ("token-mean", 0.1, False)
    with pytest.raises(ValueError, match="unknown --critic_type 'reinforce2'"):
        resolved(critic_type="reinforce2")
