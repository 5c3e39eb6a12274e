"""The sentinel (--sentinel): it notices a run falling apart from the run's own metrics, so that the loop can
roll it back to a healthy checkpoint and go on with a remedy (oat_cpgd.interface).

Each step's metrics are compared with the run's own recent history: the last --sentinel_window steps that
passed. A signal fires when its value lies more than --sentinel_k robust standard deviations beyond their
median, in the direction of a collapse. The signals are positive quantities whose scale changes over a run
and between models (a KL, a gradient norm), so they are compared in log space: a relative change, the same
on any model. Three choices keep clean runs quiet (measured on the demo's, benchmark/sentinel.py):
- the robust standard deviation is that of the step-to-step changes (1.4826 x their median absolute
  deviation): early in a run every signal trends (the drift falls tenfold as the policy converges), and
  the spread of the values about their median would count the trend as noise and hide a real jump;
- it is at least MIN_LOG_SCALE: a signal that has been steady does not fire on an ordinary wobble;
- values of a rising signal below NOISE_SHARE of its median over the whole run count as that floor: once
  the policy has converged, most groups carry no signal, and the gradient norm and drift near 0 swing
  tenfold.

- rising: the actor-learner k3 KL (the actors sample from weights the learner no longer has), the
  importance weights' maximum, the policy drift within a step's updates, the gradient norm;
- either way: the token entropy (exploration collapsing, or the output turning to noise) and the response
  length (answers emptied, or rambling to the limit);
- the training reward's fall from its running peak: below half of the peak and more than k robust standard
  deviations (of its step-to-step changes, not in log space: a reward may be 0 or negative) below its
  recent median;
- any non-finite metric, or an update the optimizer skipped for a non-finite gradient: at once;
- a policy drift above --sentinel_max_drift (a trust region, in nats per token): at once. A run whose
  updates are too large from its first step has no healthy history to be measured against.

The relative signals wait for MIN_HISTORY healthy steps. What fires is an `Alarm`; the sentinel keeps no
state but its history, which a rollback rewinds (`forget_after`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

RISING, FALLING, EITHER = 1, -1, 0


@dataclass(frozen=True)
class Signal:
    name: str
    """How the console names it."""
    key: str
    """Its metric."""
    direction: int
    """RISING, FALLING or EITHER: which way is a collapse."""


SIGNALS = (
    Signal("actor-learner KL", "train/logprob_gap_actor_learner", RISING),
    Signal("importance-weight max", "train/is_weight_max", RISING),
    Signal("policy drift", "train/policy_drift", RISING),
    Signal("gradient norm", "train/grad_norm", RISING),
    Signal("entropy", "train/entropy", EITHER),
    Signal("response length", "train/response_len", EITHER),
)
REWARD = Signal("reward", "actor/reward_mean", FALLING)
WATCHED_PREFIXES = ("train/", "actor/")
"""Whose non-finite values fire: what the step computed (not timings or counters)."""
MIN_HISTORY = 5
"""Healthy steps before a relative signal may fire: a median of fewer says little."""
MIN_LOG_SCALE = 0.3
"""The robust standard deviation's floor in log space: at k = 8, a factor of exp(2.4) = 11 from the median is
never taken for a collapse. On the demo's clean runs the gradient norm swings 2x between steps after a
few steady ones, and the entropy of the converged policy (0.01-0.05 nats) 3x; an LR spike moves the
drift a thousandfold (tests/test_sentinel.py)."""
NOISE_SHARE = 0.3
"""A signal's values below this share of its median over the run so far are noise (see the module's doc)."""
MIN_REWARD_SCALE = 0.02
"""The floor of the reward's robust standard deviation (rewards in [0, 1])."""
TINY = 1e-12
"""Added before a log: a signal that is exactly 0 (no drift in a one-update step) stays finite."""
KL = SIGNALS[0].key
DRIFT = SIGNALS[2]


@dataclass(frozen=True)
class Alarm:
    step: int
    signal: str
    key: str
    value: float
    median: float
    """The history's median (for the reward: its running peak); NaN for an alarm against a bound."""
    limit: float
    """The value beyond which it fires."""

    def text(self) -> str:
        if not math.isfinite(self.value):
            return f"step {self.step}'s {self.key} is {self.value}"
        if not math.isfinite(self.median):  # a bound, not a history
            return f"step {self.step}'s {self.signal} ({self.key}) is {self.value:.4g}, above {self.limit:.4g}"
        reference = "its running peak" if self.key == REWARD.key else "its recent median"
        return (
            f"step {self.step}'s {self.signal} ({self.key}) is {self.value:.4g}, beyond {self.limit:.4g} "
            f"({reference}: {self.median:.4g})"
        )


def median_absolute_deviation(values: list[float]) -> float:
    center = statistics.median(values)
    return statistics.median(abs(v - center) for v in values)


def center_and_scale(values: list[float], floor: float) -> tuple[float, float]:
    """The median of `values`, and the robust standard deviation of their step-to-step changes (1.4826 x their
    median absolute deviation, a standard deviation for normal data), at least `floor`."""
    changes = [later - earlier for earlier, later in zip(values, values[1:], strict=False)]
    return statistics.median(values), max(1.4826 * median_absolute_deviation(changes), floor)


def relative_alarm(
    signal: Signal, value: float, history: list[float], k: float, step: int, floor: float = TINY
) -> Alarm | None:
    """Whether log(`value`) lies more than k robust standard deviations beyond the median of log(history).
    `floor` is added before the log: values below it are noise."""
    logs = [math.log(abs(v) + floor) for v in history]
    center, scale = center_and_scale(logs, MIN_LOG_SCALE)
    here = math.log(abs(value) + floor)
    high, low = center + k * scale, center - k * scale
    median = math.exp(center)
    if signal.direction != FALLING and here > high:
        return Alarm(step, signal.name, signal.key, value, median, math.exp(high))
    if signal.direction != RISING and here < low:
        return Alarm(step, signal.name, signal.key, value, median, math.exp(low))
    return None


def reward_alarm(value: float, history: list[float], peak: float, k: float, step: int) -> Alarm | None:
    """Whether the reward has fallen below half its running peak and k robust standard deviations below its
    recent median."""
    center, scale = center_and_scale(history, MIN_REWARD_SCALE)
    limit = min(center - k * scale, peak / 2)
    if peak > 0 and value < limit:
        return Alarm(step, REWARD.name, REWARD.key, value, peak, limit)
    return None


def non_finite(metrics: dict[str, float], step: int) -> Alarm | None:
    for key, value in metrics.items():
        if key.startswith(WATCHED_PREFIXES) and isinstance(value, float | int) and not math.isfinite(value):
            return Alarm(step, "non-finite value", key, float(value), math.nan, math.nan)
    if metrics.get("train/skipped_steps", 0) > 0:
        value = float(metrics["train/skipped_steps"])
        return Alarm(step, "update skipped for a non-finite gradient", "train/skipped_steps", value, 0.0, 0.0)
    return None


class Sentinel:
    """The history of a run's healthy steps, and the test of each new step against it."""

    def __init__(self, k: float, window: int, kl_floor: float, max_drift: float = 0.0) -> None:
        """`kl_floor`: the actor-learner KL that is numerical noise. The learner and vLLM compute the same
        weights' log-probs with different kernels; in fp32 their k3 KL is about 1e-12 and varies tenfold
        from step to step, which must not fire. The loop passes the KL of the sync check's tolerance
        (a mean log-prob gap g gives a k3 KL of about g^2 / 2): what the run already calls the same weights."""
        self.k, self.window, self.kl_floor, self.max_drift = k, window, kl_floor, max_drift
        self.history: list[tuple[int, dict[str, float]]] = []
        """(step, metrics) of the steps that passed, oldest first."""

    def check(self, step: int, metrics: dict[str, float]) -> Alarm | None:
        """The first signal that fires on `step`'s metrics; None if none does (the step joins the history)."""
        alarm = non_finite(metrics, step) or self._beyond_trust_region(step, metrics) or self._relative(step, metrics)
        if alarm is None:
            self.history.append((step, metrics))
        return alarm

    def _beyond_trust_region(self, step: int, metrics: dict[str, float]) -> Alarm | None:
        drift = metrics.get(DRIFT.key)
        if self.max_drift > 0 and drift is not None and drift > self.max_drift:
            return Alarm(step, "policy drift beyond the trust region", DRIFT.key, drift, math.nan, self.max_drift)
        return None

    def _relative(self, step: int, metrics: dict[str, float]) -> Alarm | None:
        if len(self.history) < MIN_HISTORY:
            return None
        recent = [m for _, m in self.history[-self.window :]]
        for signal in SIGNALS:
            past = [m[signal.key] for m in recent if signal.key in m]
            if signal.key in metrics and len(past) >= MIN_HISTORY:
                if alarm := relative_alarm(signal, metrics[signal.key], past, self.k, step, self._noise_floor(signal)):
                    return alarm
        if REWARD.key in metrics:
            peak = max(m.get(REWARD.key, -math.inf) for _, m in self.history)
            past = [m[REWARD.key] for m in recent if REWARD.key in m]
            if len(past) >= MIN_HISTORY:
                return reward_alarm(metrics[REWARD.key], past, peak, self.k, step)
        return None

    def _noise_floor(self, signal: Signal) -> float:
        """What is added to the signal before its log: for a rising signal, NOISE_SHARE of its median over the
        run so far (for the KL, at least kl_floor); for entropy and length, whose fall to 0 is a collapse,
        nothing."""
        if signal.direction != RISING:
            return TINY
        run_median = statistics.median(abs(m[signal.key]) for _, m in self.history if signal.key in m)
        return max(NOISE_SHARE * run_median, self.kl_floor if signal.key == KL else TINY)

    def forget_after(self, step: int) -> None:
        """A rollback to `step`: the steps after it are replayed, and judged again."""
        self.history = [(s, m) for s, m in self.history if s <= step]


class Collapse(Exception):
    """Raised in the loop when the sentinel fires; the loop rolls the run back (oat_cpgd.interface)."""

    def __init__(self, alarm: Alarm, metrics: dict[str, float]) -> None:
        super().__init__(alarm.text())
        self.alarm, self.metrics = alarm, metrics


class SentinelGaveUp(RuntimeError):
    """More alarms than --max_rollbacks, or none of the run's rollback points is from before the alarm."""


@dataclass
class Course:
    """What the rollbacks so far have changed in the run; saved with every checkpoint, so that a resumed
    run goes on as the original would."""

    rollbacks: int = 0
    lr_factor: float = 1.0
    """The product of the LR remedies so far: the learners' LR is --learning_rate's schedule times it."""
    prompt_offset: int = 0
    """Steps' worth of prompts skipped: step s draws the prompts of step s + prompt_offset."""
    alarms: list[str] = field(default_factory=list)
    """This process's alarms, for the error that ends the run (not saved)."""

    def state(self) -> dict[str, float]:
        return {"rollbacks": self.rollbacks, "lr_factor": self.lr_factor, "prompt_offset": self.prompt_offset}

    @classmethod
    def from_state(cls, state: dict) -> Course:
        """From a checkpoint's state (one saved without a sentinel's: as at the start)."""
        return cls(state.get("rollbacks", 0), state.get("lr_factor", 1.0), state.get("prompt_offset", 0))
