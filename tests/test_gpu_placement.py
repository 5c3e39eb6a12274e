"""The placement booked on a real Ray cluster that has 8 GPUs on paper (Ray takes `num_gpus=8` on a CPU
machine and hands out GPU ids as on a GPU node): the roles, started by the library's own spawn functions,
report the GPUs Ray gave them. Also the seeds' recipes, dry-run against such a cluster."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from support.placement import ProbeActor, ProbeLearner

from oat_cpgd.args import PPOArgs
from oat_cpgd.cluster import cluster_nodes, reserve, spawn_actors, spawn_learners, start_local_ray
from oat_cpgd.learners.schedule import ScheduleSteps
from oat_cpgd.placement import plan_placement

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def eight_gpus():
    """A private one-node cluster with 8 GPUs on paper; yields its address."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    temp_dir = start_local_ray(num_gpus=8, num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def flags(**values) -> PPOArgs:
    """4 of the cluster's 8 GPUs: each role is a process, and a CPU machine starts them slowly."""
    defaults = dict(ray_address="attached", critic_type="grpo", gpus=4, train_batch_size=8, rollout_batch_size=8)
    args = PPOArgs(**{**defaults, **values})
    args.resolve()
    return args


def place(args: PPOArgs) -> tuple[list[dict], list[dict]]:
    """Book `args`'s placement, start probe roles with the library's spawn functions, and return where
    each learner rank and each actor (with its engine's workers) landed."""
    reservation = reserve(plan_placement(cluster_nodes(), args))
    try:
        actors = spawn_actors(args, reservation, ProbeActor)
        learners = spawn_learners(args, reservation, ProbeLearner, schedule_steps=ScheduleSteps(1, 1))
        try:
            return ray.get([r.where.remote() for r in learners]), ray.get([a.where.remote() for a in actors])
        finally:
            for handle in actors + learners:
                ray.kill(handle)
    finally:
        reservation.release()


def gpus(role: dict) -> list[int]:
    """The GPUs a role computes on: its own, or its tensor-parallel workers'."""
    return sorted(gpu for worker in role.get("workers") or [role] for gpu in worker["gpus"])


def test_collocated_learner_i_and_actor_i_share_gpu_i_and_no_two_of_a_kind_share_one(eight_gpus):
    learners, actors = place(flags(collocate=True))
    assert [gpus(learner) for learner in learners] == [[i] for i in range(4)]
    assert [gpus(actor) for actor in actors] == [[i] for i in range(4)]
    assert [learner["visible"] for learner in learners] == [str(i) for i in range(4)]  # what CUDA would see
    assert len({learner["master"] for learner in learners}) == 1  # one rendezvous for all ranks


def test_split_actors_and_learners_hold_separate_gpus(eight_gpus):
    learners, actors = place(flags())
    learner_gpus = [gpu for learner in learners for gpu in gpus(learner)]
    actor_gpus = [gpu for actor in actors for gpu in gpus(actor)]
    assert len(learners) == len(actors) == 2
    assert sorted(learner_gpus + actor_gpus) == list(range(4))  # each GPU to one role


def test_tensor_parallel_engines_hold_two_gpus_each_through_their_workers(eight_gpus):
    learners, actors = place(flags(collocate=True, vllm_tensor_parallel_size=2))
    assert [gpus(learner) for learner in learners] == [[i] for i in range(4)]
    assert [gpus(actor) for actor in actors] == [[0, 1], [2, 3]]
    for actor in actors:
        assert actor["gpus"] == []  # the actor's own process holds none: its workers do
        assert actor["engine_options"] == {"distributed_executor_backend": "ray"}
        assert len({worker["node"] for worker in actor["workers"]}) == 1
    split_learners, split_actors = place(flags(vllm_tensor_parallel_size=2))
    assert [gpus(actor) for actor in split_actors] == [[2, 3]]
    assert [gpus(learner) for learner in split_learners] == [[0], [1]]


RECIPES = {
    # recipe: (learner GPUs, actor GPUs), as the plan lines print them
    "deepscaler_cpgd.sh": ([[i] for i in range(8)], [[0, 1], [2, 3], [4, 5], [6, 7]]),
    "deepscaler_ppo.sh": ([[i] for i in range(8)], [[0, 1], [2, 3], [4, 5], [6, 7]]),
    "gsm8k_ppo.sh": ([[i] for i in range(8)], [[i] for i in range(8)]),
    "countdown_r1_zero_grpo.sh": ([[0], [1], [2], [3]], [[4], [5], [6], [7]]),
    "gsm8k_python_tool_grpo.sh": ([[i] for i in range(8)], [[i] for i in range(8)]),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipes_dry_run_plans_on_eight_gpus(recipe, eight_gpus, tmp_path):
    """Each of examples/*.sh as a user types it with --dry_run --ray_address: the plan, one line per role."""
    data = tmp_path / "data"
    for name in ("gsm8k", "countdown", "deepscaler"):  # the recipes prepare their data unless it is there
        (data / name).mkdir(parents=True)
        for split in ("train", "test"):
            (data / name / f"{split}.jsonl").write_text("")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DATA_ROOT": str(data),
        # Ray otherwise swaps 127.0.0.1 for the machine's address; this keeps the driver on loopback.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    done = subprocess.run(
        ["bash", f"examples/{recipe}", "--dry_run", "--ray_address", eight_gpus],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plan = re.findall(r"^placement: (learner|actor) (\d+) -> node ([\d.]+), GPUs \[([\d, ]*)\]$", done.stderr, re.M)
    assert len({node for _, _, node, _ in plan}) == 1, done.stderr[-3000:]  # the cluster's one node
    found = {"learner": [], "actor": []}
    for role, index, _, listed in plan:
        assert int(index) == len(found[role])
        found[role].append([int(gpu) for gpu in listed.split(", ") if gpu])
    assert (found["learner"], found["actor"]) == RECIPES[recipe], done.stderr[-3000:]
