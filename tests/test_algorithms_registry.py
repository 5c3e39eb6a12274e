"""The algorithm registry: every entry resolves, the flags follow it, a new entry needs no other edit,
and algorithms of the user's own (`--critic_type module:NAME`, `register_algorithm`) reach the workers."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from oat_cpgd.algorithms import (
    AGG_MODES,
    ALGORITHMS,
    CPGD_WEIGHTS,
    GROUP_WEIGHTS,
    Algorithm,
    algorithm_names,
    declared_stats,
    get_algorithm,
)
from oat_cpgd.algorithms.registry import REGISTERED_BY
from oat_cpgd.args import ConfigError, CPGDArgs, PPOArgs
from oat_cpgd.cli import parse_args

REPO = Path(__file__).resolve().parents[1]


def resolved(args_cls=PPOArgs, **flags):
    args = args_cls(**{"num_samples": 4, "rollout_batch_size": 4, "train_batch_size": 8, **flags})
    args.resolve()
    return args


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_entry_resolves_with_the_cpgd_flags(name):
    algorithm = get_algorithm(name)
    args = resolved(CPGDArgs, critic_type=name)
    assert callable(algorithm.estimator()) and declared_stats(algorithm.loss())
    assert algorithm.agg_mode in AGG_MODES
    if not algorithm.needs_critic:
        assert algorithm.advantage_options(args)["weight"] in GROUP_WEIGHTS
    assert (args.loss_agg_mode, args.clip_low, args.clip_high) == (algorithm.agg_mode, *algorithm.clip)


def test_algorithm_names_are_the_registry():
    assert algorithm_names() == list(ALGORITHMS)
    expected = {"ppo", "grpo", "drgrpo", "cpgd", "rloo", "reinforce_pp_baseline", "gspo", "cispo", "gmpo"}
    assert expected <= set(algorithm_names())


def test_entries_say_what_the_algorithms_are():
    assert get_algorithm("ppo").needs_critic and get_algorithm("ppo").shuffle_minibatches
    assert not any(
        get_algorithm(n).needs_critic or get_algorithm(n).shuffle_minibatches for n in ALGORITHMS if n != "ppo"
    )
    assert get_algorithm("reinforce_pp_baseline").whiten_advantages
    group_weights = {name: get_algorithm(name).advantage_options(resolved(CPGDArgs)) for name in ALGORITHMS}
    assert {name: options.get("weight") for name, options in group_weights.items()} == {
        "ppo": None,
        "grpo": "std",
        "drgrpo": "unit",
        "cpgd": "std",  # --cpgd_weight's default
        "rloo": "leave_one_out",
        "reinforce_pp_baseline": "unit",
        "gspo": "std",
        "cispo": "std",
        "gmpo": "std",
    }
    assert get_algorithm("cpgd").loss_options(resolved(CPGDArgs, policy_drift_coeff=0.5)) == {
        "drift_coef": 0.5,
        "drift_clip": 2.0,
    }
    assert get_algorithm("gspo").clip == (3e-4, 4e-4) and get_algorithm("gspo").policy_loss == "gspo"
    assert get_algorithm("cispo").clip == (1.0, 4.0) and get_algorithm("gmpo").clip == (0.4, 0.4)


@pytest.mark.parametrize(("flag", "weight"), [("std", "std"), ("clip_filter", "clip_filter"), ("equal", "unit")])
def test_cpgd_weight_picks_the_group_weight(flag, weight):
    args = resolved(CPGDArgs, cpgd_weight=flag, clip_filter_max_weight=5.0)
    assert get_algorithm("cpgd").advantage_options(args) == {"weight": weight, "clip_filter_max_weight": 5.0}
    assert CPGD_WEIGHTS[flag] == weight


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
    reinforce = Algorithm(
        policy_loss="ppo_clip", agg_mode="token-mean", advantage_kwargs={"weight": "unit"}, clip=(0.1, 0.1)
    )
    monkeypatch.setitem(ALGORITHMS, "reinforce", reinforce)
    args = resolved(critic_type="reinforce")
    assert (args.agg_mode, args.clip_low, args.needs_reference) == ("token-mean", 0.1, False)
    with pytest.raises(ConfigError, match="unknown algorithm 'reinforce2'; known: ppo, grpo, .*reinforce, or"):
        resolved(critic_type="reinforce2")


# --- algorithms of the user's own ------------------------------------------------------------

USER_ALGORITHMS = """
import torch
from oat_cpgd.algorithms import LOSS, Algorithm, aggregate, declare_stats, register_algorithm


@declare_stats(pg_loss=LOSS)
def plain_loss(logp, old_logp, advantages, mask, *, agg_mode, max_len, is_weights, clip_low, clip_high):
    pg_loss = aggregate(-advantages * (logp - old_logp), mask, agg_mode, max_len=max_len)
    return pg_loss, {"pg_loss": pg_loss.detach()}


def undeclared_loss(logp, old_logp, advantages, mask, **options):
    return logp.sum(), {}


PLAIN = Algorithm(policy_loss=plain_loss, agg_mode="token-mean", advantage_kwargs={"weight": "std"})
UNDECLARED = Algorithm(policy_loss=undeclared_loss, agg_mode="token-mean")
NOT_AN_ALGORITHM = 3
register_algorithm("plain_by_name", PLAIN)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of user algorithms in the launch directory (the test's cwd); the registry restored after."""
    name = f"user_algorithms_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(USER_ALGORITHMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("oat_cpgd.algorithms.registry.ALGORITHMS", dict(ALGORITHMS))
    monkeypatch.setattr("oat_cpgd.algorithms.registry.REGISTERED_BY", dict(REGISTERED_BY))
    yield name
    sys.modules.pop(name, None)


def test_an_algorithm_from_the_users_module(user_module):
    args = resolved(critic_type=f"{user_module}:PLAIN")
    assert args.critic_type == f"{user_module}:PLAIN" and args.run_kind() == "PLAIN"
    assert (args.agg_mode, args.clip_low) == ("token-mean", 0.2)
    assert get_algorithm(args.critic_type).loss().__name__ == "plain_loss"


@pytest.mark.parametrize(
    ("attribute", "error"),
    [
        ("NOT_AN_ALGORITHM", r"--critic_type {module}:NOT_AN_ALGORITHM: .* is not an oat_cpgd.algorithms.Algorithm"),
        ("MISSING", r"--critic_type {module}:MISSING: .* is not an oat_cpgd.algorithms.Algorithm"),
        ("UNDECLARED", r"--critic_type {module}:UNDECLARED: undeclared_loss does not say how its stats are reduced"),
    ],
)
def test_a_broken_user_algorithm_is_a_flag_error_at_parse_time(user_module, attribute, error, capsys):
    with pytest.raises(SystemExit):
        parse_args(PPOArgs, argv=["--critic_type", f"{user_module}:{attribute}"])
    assert re.search(error.format(module=user_module), capsys.readouterr().err)


def test_an_algorithm_module_that_does_not_import_is_a_flag_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(PPOArgs, argv=["--critic_type", "no_such_module:ALGO"])
    assert "--critic_type no_such_module:ALGO does not import: ModuleNotFoundError" in capsys.readouterr().err


def test_registered_algorithm_names_reach_the_ray_workers(user_module, tmp_path, monkeypatch):
    """A name registered in the driver becomes `module:name`, which a fresh process (a Ray worker, the launch
    directory on its path) resolves by importing the module, which registers it again."""
    monkeypatch.syspath_prepend(tmp_path)
    __import__(user_module)
    args = resolved(critic_type="plain_by_name")
    assert args.critic_type == f"{user_module}:plain_by_name"
    worker = (
        "import sys; from oat_cpgd.algorithms import get_algorithm; print(get_algorithm(sys.argv[1]).loss().__name__)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    done = subprocess.run([sys.executable, "-c", worker, args.critic_type], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "plain_loss", done.stderr


def test_the_example_algorithm_resolves_from_the_repository_root(monkeypatch):
    """examples/my_algorithm.py, as the README runs it (the learners import it from the launch directory)."""
    monkeypatch.chdir(REPO)
    args = resolved(critic_type="examples.my_algorithm:REINFORCE")
    assert args.critic_type == "examples.my_algorithm:REINFORCE" and args.agg_mode == "seq-mean-token-mean"


def test_the_learner_refuses_a_stat_its_function_did_not_declare():
    """A new stat (say a drift loss) is not silently averaged over tokens: its loss must say how it reduces."""
    from oat_cpgd.learners.learner import Learner  # imports DeepSpeed

    learner = SimpleNamespace(stat_reductions={**declared_stats(get_algorithm("cpgd").loss()), "entropy": "token_mean"})
    assert Learner._reduction(learner, "pg_loss") == "loss" and Learner._reduction(learner, "clip_frac") == "token_mean"
    with pytest.raises(TypeError, match="stat 'drift_loss' has no declared reduction"):
        Learner._reduction(learner, "drift_loss")
