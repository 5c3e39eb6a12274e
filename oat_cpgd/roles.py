"""Every call the loop makes across roles, and what happens when a role is gone.

`Roles` holds the run's actors and learner ranks. Each call on them goes through it, and each wait is
bounded by --role_timeout:
- an actor that dies or stalls, whatever it was doing (a rollout chunk, a sync, the sync check, an
  evaluation), is restarted by Ray, every actor is drained and rejoins a fresh weight transfer, the
  current weights are sent, and the interrupted call is redone;
- a learner rank that dies or stalls raises `LearnersLost`: the loop then has the whole group started
  again (`restart_learners`), which loads the latest checkpoint, and replays the steps since.
A role whose restarts are spent ends the run with `RoleFailed`, naming the role, the cause and the
command that resumes the run.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray._private import state as ray_state

from oat_cpgd.args import PPOArgs
from oat_cpgd.checkpoint import latest_checkpoint
from oat_cpgd.cluster import Reservation, spawn_actors, spawn_learners

if TYPE_CHECKING:
    from oat_cpgd.learners.schedule import ScheduleSteps

logger = logging.getLogger(__name__)

EVENTS = ("misc/actor_restarts", "misc/learner_restarts", "misc/steps_replayed")
"""What `Roles.take_events` counts."""
CALLS_INTO_ACTORS = frozenset({"connect_actors", "sync_weights"})
"""Learner methods that call the actors: their failure may be an actor's."""
PEER_GRACE_S = 30.0
"""How long the other learner ranks get to fail after one rank's collective failed (see `_gather`)."""


def start_roles(
    args: PPOArgs, reservation: Reservation, learner_cls, actor_cls, schedule_steps: ScheduleSteps
) -> tuple[list, list]:
    """The actors and the learner ranks. Collocated, in the order shared GPUs need:
    1. the vLLM engines start, and the loop waits for them: each sizes its KV cache from its GPU's
       free memory, which a learner loading a model meanwhile would shrink or make vLLM's memory
       check fail;
    2. the engines sleep;
    3. only then the learners start.
    As OpenRLHF (openrlhf/trainer/ray/vllm_engine/factory.py: the engines sleep right after creation,
    before the trainer's models load) and TRL's colocate mode. On GPUs of their own (and on CPU, where
    vLLM's KV cache has a fixed size) both start at once: the learners load their models while the
    engines start (a 2-step tiny-model run on 2 cores: 26 s instead of 31, medians of 3). A failure
    stops what was started."""
    actors, learners = spawn_actors(args, reservation, actor_cls), []
    try:
        if reservation.placement.collocate:
            ray.get([actor.sleep.remote() for actor in actors])  # queued behind the engine's start
        learners = spawn_learners(args, reservation, learner_cls, schedule_steps)
        ray.get([role.__ray_ready__.remote() for role in actors + learners])
    except BaseException:
        for handle in actors + learners:
            ray.kill(handle)
        raise
    return actors, learners


class RoleFailed(RuntimeError):
    """A role died or stalled and cannot be brought back (its restarts are spent): the run stops."""


class LearnersLost(Exception):
    """A learner rank died or stalled; the loop restarts the group from the latest checkpoint."""

    def __init__(self, rank: int, cause: str) -> None:
        super().__init__(f"learner rank {rank} {cause}")
        self.rank, self.cause = rank, cause


class _ActorLost(Exception):
    """A learner's call into the actors (a sync) failed or stalled because an actor died."""

    def __init__(self, actor: int) -> None:
        self.actor = actor


class WeightSyncError(RuntimeError):
    """The actors' log-probs do not match the learner's after a sync."""


@dataclass
class ActorCall:
    """One call on one actor, and what it takes to make it again."""

    actor: int
    method: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    future: Any = None
    restarts_seen: int = 0
    """The actor's restarts when it was sent: a later failure of a call sent before a restart is that
    restart's, not a new death."""


@dataclass
class SyncCheck:
    """A sync's check under way (`Roles.start_check`)."""

    learner_futures: list
    actor_calls: list[ActorCall]


class Roles:
    """The actors and learner ranks of a run, and every call on them (see the module's docstring).

    `spawn_learners` is None for an evaluation alone, which has no learners: a restarted actor then
    loads --pretrain, as at start.
    """

    def __init__(
        self, args: PPOArgs, actors: list, learners: list, run_dir: Path, spawn_learners: Callable[[], list] | None
    ) -> None:
        self.args, self.run_dir = args, run_dir
        self.actors, self.learners, self.spawn_learners = actors, learners, spawn_learners
        self.timeout = args.role_timeout
        self.actor_restarts = [0] * len(actors)
        self.learner_restarts = 0
        self.learner_version = 0
        """Learning steps in the learners' weights (the loop says when they change: `learned`)."""
        self.events: Counter[str] = Counter()
        """Restarts since the loop last took them (`take_events`), for the step's metrics."""

    @classmethod
    def start(
        cls,
        args: PPOArgs,
        reservation: Reservation,
        learner_cls,
        actor_cls,
        schedule_steps: ScheduleSteps,
        run_dir: Path,
    ) -> Roles:
        """Start the run's roles (`start_roles`)."""
        actors, learners = start_roles(args, reservation, learner_cls, actor_cls, schedule_steps)
        return cls(
            args, actors, learners, run_dir, lambda: spawn_learners(args, reservation, learner_cls, schedule_steps)
        )

    # ------------------------------------------------------------------ the actors
    def submit(self, actor: int, method: str, *args: Any, **kwargs: Any) -> ActorCall:
        """Send `method(*args, **kwargs)` to actor `actor`; `results` waits for it."""
        call = ActorCall(actor, method, args, kwargs, restarts_seen=self.actor_restarts[actor])
        call.future = getattr(self.actors[actor], method).remote(*args, **kwargs)
        return call

    def results(self, calls: list[ActorCall]) -> list:
        """The calls' results, in order. A call whose actor died or stalled is made again once the
        actor is back (`_recover_actor`)."""
        return [self._result(call) for call in calls]

    def on_actors(self, method: str, *args: Any) -> list:
        """`method(*args)` on every actor; their results."""
        return self.results([self.submit(i, method, *args) for i in range(len(self.actors))])

    def _result(self, call: ActorCall) -> Any:
        while True:
            try:
                return ray.get(call.future, timeout=self.timeout)
            except ray.exceptions.GetTimeoutError:
                cause = f"did not answer {call.method} within --role_timeout {self.timeout:g} s"
                self._recover_actor(call, cause, stalled=True)
            except ray.exceptions.RayActorError as error:
                self._recover_actor(call, f"died during {call.method} ({type(error).__name__})")
            call = self.submit(call.actor, call.method, *call.args, **call.kwargs)

    def _recover_actor(self, call: ActorCall, cause: str, stalled: bool = False) -> None:
        if self.actor_restarts[call.actor] != call.restarts_seen:
            return  # this actor was brought back after the call was sent: send it again
        self._restart_actor(call.actor, cause, stalled)
        self._reconnect_actors()

    def _restart_actor(self, index: int, cause: str, stalled: bool = False) -> None:
        """Count actor `index`'s restart and wait until Ray has started it again."""
        self.actor_restarts[index] += 1
        self.events["misc/actor_restarts"] += 1
        limit = self.args.max_actor_restarts
        logger.warning(
            "actor %d %s: restarting it (restart %d of --max_actor_restarts %d), then every actor gets the "
            "weights of step %d", index, cause, self.actor_restarts[index], limit, self.learner_version,
        )  # fmt: skip
        actor = self.actors[index]
        if stalled:
            ray.kill(actor, no_restart=False)  # Ray starts it again, as after a crash
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=self.timeout)
                return
            except ray.exceptions.ActorDiedError as error:
                raise RoleFailed(
                    f"actor {index} {cause}, and its --max_actor_restarts ({limit}) are spent, so the run stops; "
                    f"{self.resume_hint()}"
                ) from error
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as error:
                if time.monotonic() > deadline:
                    raise RoleFailed(
                        f"actor {index} {cause}, and did not start again within --role_timeout {self.timeout:g} s, "
                        f"so the run stops; {self.resume_hint()}"
                    ) from error
                time.sleep(1.0)

    def _reconnect_actors(self) -> None:
        """After an actor restart: every actor finishes what it was given (Ray runs an actor's calls in
        order), so none is left in the old transfer; then they all join a new one and get the
        learners' weights."""
        self.on_actors("__ray_ready__")
        if self.learners:
            self.connect()
            self._send_weights()

    def actor_states(self) -> list[tuple[str, int]]:
        """Each actor's state (ALIVE, RESTARTING, DEAD) and restarts as Ray's control store has them;
        asked without queueing behind the actor's own calls."""
        infos = [ray_state.actors(actor._actor_id.hex()) for actor in self.actors]
        return [(info["State"], int(info["NumRestarts"])) for info in infos]

    # ------------------------------------------------------------------ the learners
    def on_learners(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list:
        """`method` on every learner rank (a collective), with `args`, or rank r's `per_rank[r]`; their results."""
        futures = [
            getattr(learner, method).remote(*(per_rank[rank] if per_rank else args))
            for rank, learner in enumerate(self.learners)
        ]
        return self._gather(futures, method, calls_actors=method in CALLS_INTO_ACTORS)

    def _gather(self, futures: list, method: str, calls_actors: bool = False) -> list:
        """ray.get over one call on every rank. A rank that died, or whose call outlasts --role_timeout,
        raises LearnersLost: the others wait for it in a collective forever. With `calls_actors` (the
        learners talk to the actors: a sync), a failure or stall while an actor is down raises
        _ActorLost, as that actor's."""
        deadline = time.monotonic() + self.timeout
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                rank = futures.index(pending[0])
                stalled = f"did not finish {method} within --role_timeout {self.timeout:g} s"
                down = self._actor_down() if calls_actors else None
                if down is not None:  # it waits in the transfer for a dead actor, and may never return
                    raise LearnersLost(rank, f"{stalled}: actor {down} died in it")
                raise LearnersLost(rank, stalled)
            try:
                ray.get(ready[0])
            except ray.exceptions.RayTaskError as error:
                # The learner's code raised: because a peer it talks to died (gloo's "connection reset by
                # peer"; Ray makes an error whose cause is an actor's death a RayActorError too), or in its
                # own right, which starting it again would only repeat.
                down = self._actor_down() if calls_actors else None
                if down is not None:
                    raise _ActorLost(down) from error
                self._blame_learners(futures, pending, method)
                if any(not ray.wait([future], timeout=0)[0] for future in pending):
                    # The others wait for it in a collective, which would never end.
                    raise LearnersLost(futures.index(ready[0]), f"failed in {method} ({error.cause!r})") from error
                raise
            except ray.exceptions.RayActorError as error:
                raise LearnersLost(futures.index(ready[0]), f"died during {method} ({type(error).__name__})") from error
        return ray.get(futures)

    def _actor_down(self) -> int | None:
        """The first actor that died since the loop last brought it back (it may be up again already), if any."""
        for index, (state, restarts) in enumerate(self.actor_states()):
            if state != "ALIVE" or restarts > self.actor_restarts[index]:
                return index
        return None

    def _blame_learners(self, futures: list, pending: list, method: str) -> None:
        """Give the other ranks time to fail too, and raise LearnersLost if one of them died."""
        ray.wait(pending, num_returns=len(pending), timeout=PEER_GRACE_S)
        for future in pending:
            try:
                ray.get(future, timeout=0)
            except ray.exceptions.RayActorError as died:
                raise LearnersLost(futures.index(future), f"died during {method} ({type(died).__name__})") from died
            except Exception:  # still running, or failed in its own right
                continue

    def learned(self, step: int) -> None:
        """The learners' weights now hold `step` learning steps."""
        self.learner_version = step

    def connect(self) -> None:
        """Open a new weight transfer from the learners to every actor's vLLM workers."""
        workers = self.on_actors("weight_workers")
        self.on_actors("reset_weight_transfer")
        group = ActorGroup(self.actors, workers)
        self.on_learners("connect_actors", group, sum(workers))

    def sync(self) -> float:
        """The learners' weights to every actor, which label what they sample next with the learners'
        step; returns the wall time. An actor lost on the way is restarted, and the sync redone."""
        start = time.perf_counter()
        try:
            self._send_weights()
        except _ActorLost as lost:
            self._restart_actor(lost.actor, "died during the weight sync")
            self._reconnect_actors()  # which syncs
        return time.perf_counter() - start

    def _send_weights(self) -> None:
        self.on_learners("sync_weights")
        self.on_actors("set_weight_version", self.learner_version)

    def start_check(self, probe: list[int]) -> SyncCheck:
        """Start the semantic check of the sync just made: every actor and the learners score `probe`.

        Queued on each role behind the sync and before anything else: the loop collects it
        (`finish_check`) once the next rollout, which the actors sample after it, is in, so the check
        costs a step almost nothing (the learners are idle during a rollout)."""
        learner_futures = [learner.probe_logprobs.remote(probe) for learner in self.learners]
        return SyncCheck(learner_futures, [self.submit(i, "probe_logprobs", probe) for i in range(len(self.actors))])

    def finish_check(self, check: SyncCheck, tolerance: float) -> float:
        """The largest mean absolute difference between an actor's log-probs on the probe and the
        learner's; raises WeightSyncError above `tolerance`."""
        expected = torch.tensor(self._gather(check.learner_futures, "probe_logprobs")[0])
        gaps = [float((torch.tensor(seen) - expected).abs().mean()) for seen in self.results(check.actor_calls)]
        worst = max(gaps)
        if not worst <= tolerance:  # NaN fails too
            raise WeightSyncError(
                f"after the weight sync, actor {gaps.index(worst)}'s log-probs on a fixed probe differ from the "
                f"learner's by {worst:.3g} on average (--sync_check_tolerance {tolerance}): the actors are not "
                "sampling from the trained policy, so the run stops."
            )
        return worst

    def check_weights(self) -> float:
        """Every actor's weights, tensor by tensor, against the learners' (oat_cpgd.weight_digest, exact);
        raises its WeightDigestError naming the tensors that differ. Returns the seconds it took."""
        from oat_cpgd.weight_digest import compare  # (it imports this module)

        start = time.perf_counter()
        held = self.on_actors("weights_digest")
        pieces = {piece for workers in held for pieces in workers for piece, _ in pieces}
        expected, sent = self.on_learners("weights_digest", pieces)[0]
        compare(held, expected, sent)
        return time.perf_counter() - start

    def restart_learners(self, lost: LearnersLost) -> None:
        """Stop every learner rank and start the group again (the loop then loads the latest checkpoint).
        Raises RoleFailed once --max_learner_restarts are spent."""
        self.learner_restarts += 1
        self.events["misc/learner_restarts"] += 1
        limit = self.args.max_learner_restarts
        if self.learner_restarts > limit:
            raise RoleFailed(
                f"{lost}, and the learners' --max_learner_restarts ({limit}) are spent, so the run stops; "
                f"{self.resume_hint()}"
            ) from lost
        checkpoint = latest_checkpoint(self.run_dir)
        logger.warning(
            "%s: starting the learner ranks again (restart %d of --max_learner_restarts %d) from %s",
            lost, self.learner_restarts, limit, checkpoint or "the initial weights (no checkpoint yet)",
        )  # fmt: skip
        for learner in self.learners:
            ray.kill(learner)  # the survivors too: they may wait in a collective with the dead rank
        # An actor that died with them (in a stalled sync) is counted and waited for.
        while (down := self._actor_down()) is not None:
            self._restart_actor(down, f"died beside learner rank {lost.rank}")
        self.learners = self.spawn_learners()
        self._gather([learner.__ray_ready__.remote() for learner in self.learners], "start-up")

    def take_events(self) -> dict[str, float]:
        """The restarts (and steps replayed) since the last call, as the step's metrics (0 when none)."""
        events = {name: float(self.events[name]) for name in EVENTS}
        self.events.clear()
        return events

    def resume_hint(self) -> str:
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            return "it has no checkpoint yet (--save_steps N writes them)"
        return f"its last checkpoint is {checkpoint}: continue it with --resume_dir {self.run_dir} and the same flags"

    def kill(self) -> None:
        """Stop this run's own roles (a rank left waiting in a collective would never return)."""
        for handle in self.actors + self.learners:
            ray.kill(handle)


class ActorGroup:
    """A `VLLMWeightSyncClient` over Ray actor handles: every call goes to every actor.

    vLLM's trainer engines address a single engine, whose workers take ranks 1.. of the broadcast
    group; here each actor's workers get the next block of ranks instead.
    """

    def __init__(self, actors: list, workers_per_actor: list[int]) -> None:
        self.actors = actors
        self.rank_offsets = [1 + n for n in itertools.accumulate([0, *workers_per_actor[:-1]])]

    def _call_all(self, method: str, *args: Any) -> None:
        ray.get([getattr(actor, method).remote(*args) for actor in self.actors])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if "rank_offset" not in init_info:  # IPC has no ranks
            self._call_all("init_weight_transfer_engine", init_info)
            return
        ray.get(
            [
                actor.init_weight_transfer_engine.remote({**init_info, "rank_offset": offset})
                for actor, offset in zip(self.actors, self.rank_offsets, strict=True)
            ]
        )

    def start_weight_update(self) -> None:
        self._call_all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._call_all("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._call_all("finish_weight_update", weight_version)
