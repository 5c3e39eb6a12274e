"""What each step samples: the prompts it draws and the seeds they are sampled with (pure functions of
seed and step), their chunks on the actors, and DAPO's dynamic sampling of informative groups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from oat_cpgd.args import PPOArgs
from oat_cpgd.data import PromptSet
from oat_cpgd.types import Trajectory

if TYPE_CHECKING:
    from oat_cpgd.roles import ActorCall, Roles


def prompt_order(num_prompts: int, seed: int, step: int, batch_size: int) -> list[int]:
    """Prompts drawn at learning step `step` (1-based): a fresh seeded permutation each epoch.

    A pure function of its arguments, so a resumed run draws exactly what the original would have.
    """
    start = (step - 1) * batch_size
    drawn = []
    while len(drawn) < batch_size:
        epoch, offset = divmod(start + len(drawn), num_prompts)
        permutation = np.random.default_rng([seed, epoch]).permutation(num_prompts)
        drawn.extend(permutation[offset : offset + batch_size - len(drawn)].tolist())
    return drawn


def extra_prompt_order(num_prompts: int, seed: int, step: int, draw: int, batch_size: int) -> list[int]:
    """Prompts of dynamic sampling's `draw`-th extra draw (1-based) at learning step `step`.

    Seeded by (seed, step, draw), apart from the epoch order: how many extra draws a step needed
    does not change what any other step draws, so `prompt_order` stays a pure function.
    """
    permutation = np.random.default_rng([seed, step, draw, 1]).permutation(num_prompts)
    return np.resize(permutation, batch_size).tolist()


def request_seeds(seed: int, step: int, draw: int, indices: list[int]) -> list[int]:
    """One sampling seed per prompt of a draw (`draw` 0: the step's own, n: dynamic sampling's n-th extra).

    Seeded by (seed, step, draw, position in the draw, prompt index): a resumed run, or an actor
    restarted mid-rollout, samples exactly the responses the original would have (given the same
    weights), and a prompt drawn twice in a step still gets two different groups. vLLM gives the
    k-th of a prompt's samples the seed + k, so seeds stay below 2**31 - 2**20.
    """
    return [
        int(np.random.SeedSequence([seed, step, draw, position, index]).generate_state(1)[0]) % (2**31 - 2**20)
        for position, index in enumerate(indices)
    ]


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The sampling seed of an episode's `turn` (0-based) from the episode's seed: the seed itself for the
    first turn (so a one-turn episode samples as a single-turn response does), then a hash of (seed, turn),
    so that a redone episode samples every turn again alike. Below 2**31 - 2**20, as `request_seeds`."""
    if seed is None or turn == 0:
        return seed
    return int(np.random.SeedSequence([seed, turn]).generate_state(1)[0]) % (2**31 - 2**20)


def is_informative(group: list[Trajectory]) -> bool:
    """A group whose oracle rewards (`Trajectory.reward`, before the learner's shaping) are not all
    equal: DAPO's test of a group that carries a signal."""
    return len({t.reward for t in group}) > 1


def groups_of(trajectories: list[Trajectory], size: int) -> list[list[Trajectory]]:
    return [trajectories[i : i + size] for i in range(0, len(trajectories), size)]


def fill_with_informative_groups(
    groups: list[list[Trajectory]], needed: int, draw_more: Callable[[int], list[list[Trajectory]]], max_draws: int
) -> tuple[list[list[Trajectory]], int]:
    """DAPO's dynamic sampling: `needed` groups, informative ones first, in the order drawn.

    `draw_more(n)` samples the n-th extra batch of groups; at most `max_draws` are drawn. If there
    are still too few informative groups, uninformative ones (advantage 0) fill the step so the
    batch keeps its shape. Returns the groups and the number of extra draws.
    """
    informative = [g for g in groups if is_informative(g)]
    spare = [g for g in groups if not is_informative(g)]
    draws = 0
    while len(informative) < needed and draws < max_draws:
        draws += 1
        more = draw_more(draws)
        informative += [g for g in more if is_informative(g)]
        spare += [g for g in more if not is_informative(g)]
    return (informative + spare)[:needed], draws


def start_rollout(
    args: PPOArgs, roles: Roles, prompts: PromptSet, indices: list[int], step: int, draw: int = 0
) -> list[ActorCall]:
    """Chunks of --rollout_batch_size_per_device prompts, dealt round-robin to the actors.

    Each prompt is sampled with its own seed (`request_seeds`; None: the engine's own random stream,
    --no-seeded_sampling), so a chunk redone on a restarted actor samples what it would have.
    """
    size = args.rollout_batch_size_per_device
    seeds = request_seeds(args.seed, step, draw, indices) if args.seeded_sampling else [None] * len(indices)
    calls = []
    for n, i in enumerate(range(0, len(indices), size)):
        chunk = indices[i : i + size]
        calls.append(
            roles.submit(
                n % len(roles.actors),
                "step",
                [prompts.prompt_ids[k] for k in chunk],
                [prompts.prompts[k] for k in chunk],
                [prompts.references[k] for k in chunk],
                [prompts.indices[k] for k in chunk],
                seeds[i : i + size],
            )
        )
    return calls


def finish_rollout(calls: list[ActorCall], roles: Roles) -> tuple[list[Trajectory], list[dict[str, float]]]:
    """The trajectories of every chunk, in order, and each chunk's actor metrics."""
    results = roles.results(calls)
    return [t for chunk, _ in results for t in chunk], [metrics for _, metrics in results]


@dataclass
class Rollout:
    """A step's draw: its prompts, their chunks on the actors and, once collected, the result."""

    indices: list[int]
    calls: list[ActorCall]
    result: tuple[list[Trajectory], list[dict[str, float]]] | None = None
    """The trajectories and each chunk's actor metrics (see finish_rollout)."""

    def finish(self, roles: Roles) -> tuple[list[Trajectory], list[dict[str, float]]]:
        if self.result is None:
            self.result = finish_rollout(self.calls, roles)
        return self.result

    def saved(self) -> dict:
        """What a checkpoint keeps of a collected rollout (under --asynchronous the next step's was
        sampled from weights that no checkpoint holds, so it is saved itself)."""
        assert self.result is not None, "collect the rollout before saving it"
        return {"indices": self.indices, "result": self.result}

    @classmethod
    def restored(cls, saved: dict) -> Rollout:
        return cls(saved["indices"], [], saved["result"])


def mean_metrics(chunks: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([m[k] for m in chunks])) for k in chunks[0]}
