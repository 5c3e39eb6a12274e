"""The loop's calls across roles: starting them in the order collocated GPUs need, the weight sync
and its semantic check, learner calls that name a rank that died, and bringing a restarted actor back."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch

from oat_cpgd.args import PPOArgs
from oat_cpgd.checkpoint import latest_checkpoint
from oat_cpgd.cluster import Reservation, spawn_actors, spawn_learners
from oat_cpgd.rollout import Chunk, send

if TYPE_CHECKING:
    from oat_cpgd.learners.schedule import ScheduleSteps

logger = logging.getLogger(__name__)


def call_all(handles: list, method: str, *args: Any) -> list:
    """`method(*args)` on every role in `handles`, at once; their results."""
    return ray.get([getattr(handle, method).remote(*args) for handle in handles])


def start_roles(
    args: PPOArgs, reservation: Reservation, learner_cls, actor_cls, schedule_steps: ScheduleSteps
) -> tuple[list, list]:
    """The actors and the learner ranks, started in the order collocated GPUs need:
    1. the vLLM engines start, and the loop waits for them: each sizes its KV cache from its GPU's
       free memory, which a learner loading a model meanwhile would shrink or make vLLM's memory
       check fail;
    2. collocated, the engines sleep;
    3. only then the learners start.
    As OpenRLHF (openrlhf/trainer/ray/vllm_engine/factory.py: the engines sleep right after creation,
    before the trainer's models load) and TRL's colocate mode. A failure stops what was started."""
    actors, learners = spawn_actors(args, reservation, actor_cls), []
    try:
        call_all(actors, "__ray_ready__")
        if reservation.placement.collocate:
            call_all(actors, "sleep")
        learners = spawn_learners(args, reservation, learner_cls, schedule_steps)
        call_all(learners, "__ray_ready__")
    except BaseException:
        for handle in actors + learners:
            ray.kill(handle)
        raise
    return actors, learners


class LearnerDiedError(RuntimeError):
    """A learner rank's process died; the run cannot go on without it."""


def gather_learners(futures: list, run_dir: Path) -> list:
    """ray.get over one call on every learner rank. When a rank's process died, the others wait
    for it in a collective forever: stop with an error naming the rank and the last checkpoint."""
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready[0])
        except ray.exceptions.RayActorError as error:
            raise learner_died(futures.index(ready[0]), error, run_dir) from error
        except ray.exceptions.RayTaskError as error:
            # A surviving rank's collective can fail (gloo: "connection reset by peer") before Ray
            # reports its peer's death: give the others time to end, and name a rank that died.
            ray.wait(pending, num_returns=len(pending), timeout=30)
            for future in pending:
                try:
                    ray.get(future, timeout=0)
                except ray.exceptions.RayActorError as died:
                    raise learner_died(futures.index(future), died, run_dir) from died
                except Exception:  # still running, or failed in its own right
                    continue
            raise error
    return ray.get(futures)


def learner_died(rank: int, error: Exception, run_dir: Path) -> LearnerDiedError:
    checkpoint = latest_checkpoint(run_dir)
    resume = (
        f"its last checkpoint is {checkpoint}: continue it with --resume_dir {run_dir} and the same flags"
        if checkpoint
        else "it has no checkpoint yet (--save_steps N writes them)"
    )
    return LearnerDiedError(f"learner rank {rank} died ({type(error).__name__}), so the run stops; {resume}.")


class ActorGroup:
    """A `VLLMWeightSyncClient` over Ray actor handles: every call goes to every actor.

    vLLM's trainer engines address a single engine, whose workers take ranks 1.. of the broadcast
    group; here each actor's workers get the next block of ranks instead.
    """

    def __init__(self, actors: list, workers_per_actor: list[int]) -> None:
        self.actors = actors
        self.rank_offsets = [1 + n for n in itertools.accumulate([0, *workers_per_actor[:-1]])]

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if "rank_offset" not in init_info:  # IPC has no ranks
            call_all(self.actors, "init_weight_transfer_engine", init_info)
            return
        ray.get(
            [
                actor.init_weight_transfer_engine.remote({**init_info, "rank_offset": offset})
                for actor, offset in zip(self.actors, self.rank_offsets, strict=True)
            ]
        )

    def start_weight_update(self) -> None:
        call_all(self.actors, "start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        call_all(self.actors, "update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        call_all(self.actors, "finish_weight_update", weight_version)


def connect(learners: list, actors: list) -> None:
    """Open the weight transfer from the learners to every actor's vLLM workers."""
    workers = ray.get([actor.weight_workers.remote() for actor in actors])
    ray.get([learner.connect_actors.remote(ActorGroup(actors, workers), sum(workers)) for learner in learners])


def sync_weights(learners: list, actors: list, version: int, run_dir: Path) -> float:
    """The policy's weights after `version` learning steps to every actor (learner rank 0 sends);
    returns the wall time. The actors label what they sample next with `version`."""
    start = time.perf_counter()
    gather_learners([learner.sync_weights.remote() for learner in learners], run_dir)
    ray.get([actor.set_weight_version.remote(version) for actor in actors])
    return time.perf_counter() - start


class WeightSyncError(RuntimeError):
    """The actors' log-probs do not match the learner's after a sync."""


def check_sync(learners: list, actors: list, probe: list[int], tolerance: float) -> float:
    """Semantic check of a sync: every actor's log-probs on `probe` against the learner's; returns the
    largest mean absolute difference, or raises WeightSyncError above `tolerance`."""
    from oat_cpgd.weight_digest import check_weights  # (it imports this module)

    check_weights(learners, actors)  # first, exactly, tensor by tensor; then what the actors sample
    # Both sides score the probe at once: the check costs the slower of the two, not their sum.
    learner_futures = [learner.probe_logprobs.remote(probe) for learner in learners]
    actor_futures = [actor.probe_logprobs.remote(probe) for actor in actors]
    expected = torch.tensor(ray.get(learner_futures)[0])
    gaps = [float((torch.tensor(seen) - expected).abs().mean()) for seen in ray.get(actor_futures)]
    worst = max(gaps)
    if not worst <= tolerance:  # NaN fails too
        raise WeightSyncError(
            f"after the weight sync, actor {gaps.index(worst)}'s log-probs on a fixed probe differ from the "
            f"learner's by {worst:.3g} on average (--sync_check_tolerance {tolerance}): the actors are not "
            "sampling from the trained policy, so the run stops."
        )
    return worst


def wait_until_restarted(actor, timeout_s: float = 900.0) -> None:
    """Until Ray has restarted `actor` (it is unavailable while its engine starts again)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.__ray_ready__.remote())
            return
        except ray.exceptions.ActorDiedError as error:
            raise RuntimeError("an actor died and its --max_actor_restarts are spent; the run stops") from error
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class ActorRecovery:
    """Brings an actor that died mid-rollout back: Ray restarts its process (--max_actor_restarts),
    then every actor rejoins a fresh weight transfer and gets the current weights, and the lost
    chunk is sent again."""

    def __init__(self, learners: list, actors: list, prompts, version: int, run_dir: Path) -> None:
        self.learners, self.actors, self.prompts, self.run_dir = learners, actors, prompts, run_dir
        self.version = version
        """Learning steps behind the weights the actors last received."""
        self.restarts = 0

    def synced(self, version: int) -> None:
        self.version = version

    def __call__(self, chunk: Chunk) -> Chunk:
        if chunk.restarts_seen == self.restarts:  # the first lost chunk of this death: restore the actors
            self.restarts += 1
            logger.warning(
                "actor %d died during a rollout (restart %d): reconnecting the actors, syncing the weights "
                "of step %d and resending its %d prompts", chunk.actor, self.restarts, self.version, len(chunk.indices)
            )  # fmt: skip
            wait_until_restarted(self.actors[chunk.actor])
            connect(self.learners, self.actors)
            sync_weights(self.learners, self.actors, self.version, self.run_dir)
        chunk.restarts_seen = self.restarts
        return send(self.actors, self.prompts, chunk)
