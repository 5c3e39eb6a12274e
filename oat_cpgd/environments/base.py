"""The environment interface: subclass `Environment` and implement `step`.

An episode is a conversation between the model and one environment: the model's turn (an action,
ended by eos, a stop string or a length limit) goes to `step`, which answers with an observation that
is appended to the context, a reward, and whether the episode is over. A reward oracle is the one-step
case: `OracleEnvironment` scores the single action and ends the episode.

Environments run where the oracle's checks run: in the oracle's worker processes, each call under
--oracle_timeout (oat_cpgd.oracles.base.RewardOracle.run_contained), so that one that raises or hangs
ends its episode with reward 0 and never takes the actor down. Each call gets the episode's
environment pickled and returns it, changed: keep its state in picklable attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from oat_cpgd.oracles.base import Contained, RewardOracle


@dataclass
class Step:
    """What the environment answers to one action."""

    observation: str | None
    """Text appended to the context for the model's next turn (None: nothing); never trained on."""
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)
    """The numbers its environment names in `Environment.metrics` are summed over the episode's steps;
    the final step's info is logged with the sample (give `answer` and `format_ok`, as an oracle does)."""


class Environment:
    """A task the model acts in over several turns.

    Subclasses implement `step`; `reset` may return a first observation (appended after the prompt).
    `self.oracle` is the run's --oracle (checks run inline: the environment already runs in a worker
    under the time limit), for scoring a final answer. `stop` lists the stop strings that end a
    model's turn besides eos and --stop (e.g. the closing fence of a tool call).
    """

    stop: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    """Names of numbers in its steps' infos, summed over each episode and reported as actor/<name> per
    episode (0 where absent)."""

    def __init__(self, oracle: RewardOracle) -> None:
        self.oracle = oracle
        self.prompt = ""
        self.reference: Any = None

    @classmethod
    def from_flags(cls, oracle: RewardOracle, flags: Any) -> Environment:
        """The environment a run's flags describe; override to read your own options from them."""
        return cls(oracle)

    def reset(self, prompt: str, reference: Any) -> str | None:
        """Start an episode on `prompt`; returns an optional first observation. Call super() when overriding."""
        self.prompt, self.reference = prompt, reference
        return None

    def step(self, action: str) -> Step:
        """Answer the model's turn `action` (its text, stop string included)."""
        raise NotImplementedError


class OracleEnvironment(Environment):
    """The single-turn case: the oracle scores the one action, and the episode ends.

    `--env oracle` trains exactly as no --env does (same samples, rewards and weights), through the
    multi-turn path: the test that the two agree checks that path.
    """

    def step(self, action: str) -> Step:
        reward, info = self.oracle.check(self.prompt, action, self.reference)
        return Step(None, reward, True, {key: info[key] for key in ("answer", "format_ok")})


def call_environments(
    oracle: RewardOracle, environments: list[Environment], method: str, arguments: list[tuple]
) -> list[tuple[Environment, Any] | Contained]:
    """`environment.method(*arguments)` for each environment, in `oracle`'s workers under its time limit:
    each gives the environment as the call left it and the call's result (a `Step` or a first
    observation, checked), or `Contained` where it raised, returned something else, ran over or crashed."""
    return oracle.run_contained(_call, [(env, method, args) for env, args in zip(environments, arguments, strict=True)])


def _call(environment: Environment, method: str, arguments: tuple) -> tuple[Environment, Any] | Contained:
    """Runs in a worker: what an environment returns is checked here, where a bad value is contained."""
    try:
        result = getattr(environment, method)(*arguments)
        return environment, checked_step(result) if method == "step" else checked_observation(result)
    except BaseException as error:  # SystemExit too: pebble would re-raise it in the actor
        return Contained.of(error)


def checked_observation(observation: Any) -> str | None:
    if observation is not None and not isinstance(observation, str):
        raise TypeError(f"an observation must be a str or None, got {type(observation).__name__}")
    return observation


def checked_step(step: Any) -> Step:
    """`step` with a finite float reward and a bool `done`; TypeError/ValueError for anything else."""
    if not isinstance(step, Step):
        raise TypeError(f"step() must return a Step, got {type(step).__name__}")
    reward = float(step.reward)
    if not math.isfinite(reward):
        raise ValueError(f"step() returned a non-finite reward {reward}")
    if not isinstance(step.info, dict):
        raise TypeError(f"Step.info must be a dict, got {type(step.info).__name__}")
    return Step(checked_observation(step.observation), reward, bool(step.done), step.info)
