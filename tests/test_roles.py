"""How `Roles` tells the failures of calls across roles apart, on real Ray actors standing in for the
roles (the real roles under the same failures: tests/test_chaos.py)."""

import os
import signal
import time

import pytest
import ray

from oat_cpgd.args import PPOArgs
from oat_cpgd.roles import LearnersLost, RoleFailed, Roles, _ActorLost

pytestmark = pytest.mark.slow


@ray.remote(max_restarts=1, max_task_retries=0)
class Worker:
    """Answers, fails, dies or hangs on request; counts its process's calls."""

    def __init__(self):
        self.calls = 0

    def work(self, behaviour: str = "answer") -> int:
        self.calls += 1
        if behaviour == "raise":
            raise ValueError("a bug in the role's own code")
        if behaviour == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if behaviour == "hang":
            time.sleep(3600)
        return os.getpid()

    def die_once(self, marker: str) -> int:
        """Dies the first time (the marker file outlives the process), answers after its restart."""
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()


def wait_until_up(actor) -> None:
    for _ in range(120):
        try:
            ray.get(actor.__ray_ready__.remote())
            return
        except ray.exceptions.ActorUnavailableError:  # restarting
            time.sleep(0.5)
    raise TimeoutError("the actor did not come back")


@pytest.fixture
def roles(ray_cluster, tmp_path):
    made = []

    def make(actors: int = 0, learners: int = 0, **flags) -> Roles:
        args = PPOArgs(role_timeout=flags.pop("role_timeout", 60.0), **flags)
        handles = [Worker.remote() for _ in range(actors + learners)]
        made.extend(handles)
        return Roles(args, handles[:actors], handles[actors:], tmp_path, spawn_learners=None)

    yield make
    for handle in made:
        ray.kill(handle)


def test_a_learner_rank_that_raises_stops_the_run_with_its_own_error(roles):
    """Restarting would repeat a bug: the error is the rank's own, not a loss."""
    group = roles(learners=2)
    with pytest.raises(ValueError, match="a bug in the role's own code"):
        group._gather([group.learners[0].work.remote(), group.learners[1].work.remote("raise")], "work")


def test_a_learner_rank_that_dies_is_lost_by_rank_and_call(roles):
    group = roles(learners=2)
    with pytest.raises(LearnersLost, match=r"^learner rank 1 died during work \(ActorDiedError|ActorUnavailable"):
        group._gather([group.learners[0].work.remote(), group.learners[1].work.remote("die")], "work")


def test_a_learner_rank_that_hangs_is_lost_after_the_role_timeout(roles):
    group = roles(learners=2, role_timeout=3.0)
    start = time.monotonic()
    with pytest.raises(LearnersLost, match=r"^learner rank 0 did not finish work within --role_timeout 3 s$"):
        group._gather([group.learners[0].work.remote("hang"), group.learners[1].work.remote()], "work")
    assert time.monotonic() - start < 30


def test_a_learner_failing_while_an_actor_is_down_is_the_actors_loss(roles):
    """In a sync the learner's error (gloo's "connection reset by peer") is the dead actor's doing."""
    group = roles(actors=2, learners=1)
    ray.get([actor.work.remote() for actor in group.actors])
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(group.actors[1].work.remote("die"))
    with pytest.raises(_ActorLost) as lost:
        group._gather([group.learners[0].work.remote("raise")], "sync_weights", calls_actors=True)
    assert lost.value.actor == 1


def test_an_actor_call_lost_to_a_death_is_redone_after_the_restart(roles, tmp_path):
    group = roles(actors=2)
    first = ray.get(group.actors[0].work.remote())
    calls = [group.submit(0, "die_once", str(tmp_path / "died")), group.submit(1, "work")]
    pids = group.results(calls)
    assert pids[0] != first  # answered by the restarted process
    assert group.actor_restarts == [1, 0]
    assert group.take_events() == {"misc/actor_restarts": 1.0, "misc/learner_restarts": 0.0, "misc/steps_replayed": 0.0}
    assert group.take_events()["misc/actor_restarts"] == 0.0  # taken once


def test_a_stalled_actor_is_killed_restarted_and_its_call_redone(roles, tmp_path):
    group = roles(actors=1, role_timeout=10.0)
    first = ray.get(group.actors[0].work.remote())
    call = group.submit(0, "work", "hang")
    call.args = ("answer",)  # what it is sent as again (the hang stands for a call that never returns)
    assert group.results([call])[0] != first
    assert group.actor_restarts == [1]


def test_an_actor_whose_restarts_are_spent_stops_the_run_naming_it(roles):
    group = roles(actors=1, max_actor_restarts=1)
    ray.get(group.actors[0].__ray_ready__.remote())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(group.actors[0].work.remote("die"))
    wait_until_up(group.actors[0])  # Ray restarted it (Worker's max_restarts: once)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(group.actors[0].work.remote("die"))  # now it stays dead
    with pytest.raises(RoleFailed, match=r"^actor 0 died during work .*--max_actor_restarts \(1\) are spent"):
        group.results([group.submit(0, "work")])
