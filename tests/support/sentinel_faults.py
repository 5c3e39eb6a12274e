"""Real roles that inject the faults the sentinel is for (tests/test_sentinel.py; importable by Ray workers).

Each fault strikes when its step is learned or sampled: the learning step is known from the rollout's
weight version (a step's rollout is sampled from the weights after the step before it). A fault `ONCE`
strikes the first time only (a marker file in the run folder), so the steps replayed after a rollback
run clean; otherwise it strikes every time its step comes round, rollback or not.
"""

import dataclasses

from oat_cpgd.actors import Actor
from oat_cpgd.learners import Learner
from support.faults import first_time

SPIKE_STEP = 7
"""SpikedLearner's step: its update runs at SPIKE_FACTOR x the LR."""
SPIKE_FACTOR = 1000.0
FLIP_STEP = 12
"""FlippedRewardActor's step: the oracle's rewards reach the learner with their sign flipped."""
STALE_STEP = 17
"""StaleOnceActor's step: sampled from the initial weights, as an actor restarted without the sync."""


def strikes(args, step: int, fault: str, once: bool) -> bool:
    return first_time(args, f"fault-{fault}-{step}") if once else True


def learning_step(trajectories) -> int:
    return max(t.weight_version for t in trajectories) + 1


class SpikedLearner(Learner):
    """The real learner; the update of SPIKE_STEP runs at SPIKE_FACTOR times the LR (a bad schedule or a
    hand-edited flag), every time that step is learned."""

    ONCE = False

    def learn(self, trajectories):
        if learning_step(trajectories) != SPIKE_STEP or not strikes(self.args, SPIKE_STEP, "spike", self.ONCE):
            return super().learn(trajectories)
        self.scale_learning_rate(SPIKE_FACTOR)
        try:
            return super().learn(trajectories)
        finally:
            self.scale_learning_rate(1 / SPIKE_FACTOR)


class SpikedOnceLearner(SpikedLearner):
    ONCE = True


class FaultyActor(Actor):
    """The real actor, with FlippedRewardActor's and StaleOnceActor's faults, each once a run."""

    def step(self, prompt_ids, prompts, references, prompt_indices, seeds):
        step = self.weight_version + 1
        if step == STALE_STEP and strikes(self.args, step, "stale", once=True):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self.args.pretrain})
            self.llm.reset_prefix_cache()
        trajectories, metrics = super().step(prompt_ids, prompts, references, prompt_indices, seeds)
        if step == FLIP_STEP and strikes(self.args, step, "flip", once=True):
            trajectories = [dataclasses.replace(t, reward=-t.reward) for t in trajectories]
            metrics = {**metrics, "actor/reward_mean": -metrics["actor/reward_mean"]}
        return trajectories, metrics
