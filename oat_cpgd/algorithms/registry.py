"""One entry per algorithm (`--critic_type`): the learner looks everything up here.

To add an algorithm, write its loss (or outcome estimator) as a pure function, declare how the learner
reduces the loss's stats (`declare_stats`), and describe the algorithm with an `Algorithm`:
- in this package: register the function under a name (POLICY_LOSSES, ADVANTAGE_ESTIMATORS) and add
  the entry to ALGORITHMS;
- in your own code (examples/my_algorithm.py): give the entry the function itself and run with
  `--critic_type my_module:NAME`, NAME the entry at the top level of my_module; or call
  `register_algorithm(name, entry)` at the top level of an importable module.
`--critic_type NAME` then accepts it and the learner trains it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from oat_cpgd.algorithms.advantages import ADVANTAGE_ESTIMATORS
from oat_cpgd.algorithms.losses import AGG_MODES, POLICY_LOSSES, PolicyLoss, declared_stats
from oat_cpgd.algorithms.utils import check_name

Options = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]
"""Keyword arguments of an estimator or loss: fixed, or a function of the flags that reads them."""


@dataclass(frozen=True, kw_only=True)
class Algorithm:
    """How the learner trains one algorithm."""

    policy_loss: str | PolicyLoss
    """A POLICY_LOSSES name, or the loss function itself: (logp, old_logp, advantages, mask, *, clip_low,
    clip_high, agg_mode, max_len, is_weights, **loss_options(flags)) -> (loss, stats), its stats declared with
    `declare_stats`."""
    agg_mode: str
    """Default --loss_agg_mode."""
    clip: tuple[float, float] = (0.2, 0.2)
    """Default (--clip_low, --clip_high)."""
    advantage: str | Callable[..., Any] = "group"
    """An ADVANTAGE_ESTIMATORS name (`gae`: per token, with a critic; `group`: outcome advantages within
    each prompt's group of responses), or an outcome estimator: (rewards [n], group_size,
    **advantage_options(flags)) -> advantages [n]."""
    advantage_kwargs: Options = field(default_factory=dict)
    """The outcome estimator's keyword arguments (`group`: `weight`, a GROUP_WEIGHTS name, and
    clip_filter_max_weight)."""
    loss_kwargs: Options = field(default_factory=dict)
    """The loss's keyword arguments besides those every loss takes (clip_low, clip_high, agg_mode,
    max_len, is_weights)."""
    whiten_advantages: bool = False
    """Whiten the advantages over all valid response tokens of the whole batch (all ranks)."""
    shuffle_minibatches: bool = False
    """Shuffle responses into mini-batches (PPO, as oat); group methods keep the actor's order."""
    needs_reference: bool = False
    """Load the reference model even when --beta and --kl_penalty_coef are 0."""

    @property
    def needs_critic(self) -> bool:
        """Train a value model: the advantage is GAE over per-token rewards."""
        return self.advantage == "gae"

    def estimator(self) -> Callable[..., Any]:
        return _function(self.advantage, ADVANTAGE_ESTIMATORS, "advantage estimator")

    def loss(self) -> PolicyLoss:
        return _function(self.policy_loss, POLICY_LOSSES, "policy loss")

    def advantage_options(self, flags: Any) -> dict[str, Any]:
        """The estimator's keyword arguments for these flags (an AttributeError names a flag `flags` lacks)."""
        return dict(_options(self.advantage_kwargs, flags))

    def loss_options(self, flags: Any) -> dict[str, Any]:
        """The loss's keyword arguments for these flags (an AttributeError names a flag `flags` lacks)."""
        return dict(_options(self.loss_kwargs, flags))

    def check(self) -> None:
        """Raise ValueError (unknown name) or TypeError (a loss that does not declare its stats)."""
        self.estimator()
        declared_stats(self.loss())
        check_name(self.agg_mode, AGG_MODES, "loss aggregation mode")


def _function(ref: str | Callable, registry: Mapping[str, Callable], what: str) -> Callable:
    return ref if callable(ref) else registry[check_name(ref, registry, what)]


def _options(options: Options, flags: Any) -> Mapping[str, Any]:
    return options(flags) if callable(options) else options


def ppo_clip_options(flags: Any) -> dict[str, Any]:
    return {"dual_clip": flags.dual_clip}


CPGD_WEIGHTS = {"std": "std", "clip_filter": "clip_filter", "equal": "unit"}
"""--cpgd_weight -> its GROUP_WEIGHTS name (the paper's `equal` is the unit weight)."""


def cpgd_advantage_options(flags: Any) -> dict[str, Any]:
    return {"weight": CPGD_WEIGHTS[flags.cpgd_weight], "clip_filter_max_weight": flags.clip_filter_max_weight}


def cpgd_loss_options(flags: Any) -> dict[str, Any]:
    return {"drift_coef": flags.policy_drift_coeff, "drift_clip": flags.drift_clip}


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm(
        policy_loss="ppo_clip",
        agg_mode="token-mean",
        advantage="gae",
        loss_kwargs=ppo_clip_options,
        shuffle_minibatches=True,
    ),
    "grpo": Algorithm(
        policy_loss="ppo_clip",
        agg_mode="seq-mean-token-mean",
        advantage_kwargs={"weight": "std"},
        loss_kwargs=ppo_clip_options,
    ),
    "drgrpo": Algorithm(
        policy_loss="ppo_clip",
        agg_mode="seq-mean-token-sum-norm",
        advantage_kwargs={"weight": "unit"},
        loss_kwargs=ppo_clip_options,
    ),
    "cpgd": Algorithm(
        policy_loss="cpgd",
        agg_mode="seq-mean-token-mean",
        advantage_kwargs=cpgd_advantage_options,
        loss_kwargs=cpgd_loss_options,
    ),
    "rloo": Algorithm(
        policy_loss="ppo_clip",
        agg_mode="seq-mean-token-mean",
        advantage_kwargs={"weight": "leave_one_out"},
        loss_kwargs=ppo_clip_options,
    ),
    # REINFORCE++-baseline: R - mean_g R, whitened over the batch; token-mean, as verl's recipe.
    "reinforce_pp_baseline": Algorithm(
        policy_loss="ppo_clip",
        agg_mode="token-mean",
        advantage_kwargs={"weight": "unit"},
        loss_kwargs=ppo_clip_options,
        whiten_advantages=True,
    ),
    "gspo": Algorithm(
        policy_loss="gspo", agg_mode="seq-mean-token-mean", clip=(3e-4, 4e-4), advantage_kwargs={"weight": "std"}
    ),
    "cispo": Algorithm(policy_loss="cispo", agg_mode="token-mean", clip=(1.0, 4.0), advantage_kwargs={"weight": "std"}),
    "gmpo": Algorithm(
        policy_loss="gmpo", agg_mode="seq-mean-token-mean", clip=(0.4, 0.4), advantage_kwargs={"weight": "std"}
    ),
}
"""--critic_type -> Algorithm; `register_algorithm` adds to it."""

REGISTERED_BY: dict[str, str] = {}
"""Names added by `register_algorithm` -> the module that registered them."""


def algorithm_names() -> list[str]:
    """The --critic_type names known in this process (besides `module:NAME` ones)."""
    return list(ALGORITHMS)


def register_algorithm(name: str, algorithm: Algorithm) -> Algorithm:
    """Make `--critic_type name` train `algorithm`. Call it at the top level of an importable module (the
    launch directory's, or on PYTHONPATH): the Ray workers resolve `name` by importing that module."""
    algorithm.check()
    ALGORITHMS[name] = algorithm
    REGISTERED_BY[name] = sys._getframe(1).f_globals["__name__"]  # the caller's module
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    """The algorithm of a registered name, or of `some.module:NAME`: NAME an Algorithm at the top level of
    the module, or registered under NAME when the module is imported. Raises ValueError (unknown name),
    TypeError (not an Algorithm; a loss that does not declare its stats), ImportError (the module)."""
    if name in ALGORITHMS:
        algorithm = ALGORITHMS[name]
    elif ":" in name:
        module_name, _, attribute = name.partition(":")
        algorithm = getattr(importlib.import_module(module_name), attribute, None)
        if algorithm is None and REGISTERED_BY.get(attribute) == module_name:
            algorithm = ALGORITHMS[attribute]
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"{name} is not an oat_cpgd.algorithms.Algorithm")
    else:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}, or some.module:NAME")
    algorithm.check()
    return algorithm


def importable_algorithm_name(name: str) -> str:
    """A --critic_type that resolves to the same algorithm in other processes (Ray workers).

    The registry lives per process. Built-in and `module:NAME` names are kept; a name registered by
    `register_algorithm` becomes `module:name`, the module that registered it (importing it there
    registers it again). Raises as `get_algorithm`, or ValueError where no other process can import it.
    """
    from oat_cpgd.oracles.registry import main_module_name  # (how the launch directory names a script)

    get_algorithm(name)
    module_name = REGISTERED_BY.get(name)
    if module_name is None:
        return name
    if module_name == "__main__":
        module_name = main_module_name()
    if module_name is None:
        raise ValueError(
            f"algorithm {name!r} is registered by a script other processes cannot import: register it in a "
            "module under the launch directory, or pass --critic_type some.module:NAME"
        )
    return f"{module_name}:{name}"
