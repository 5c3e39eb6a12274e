"""Two Ray nodes on this host: the actor on one, the learner ranks on the other, placed by custom resources.

The rollouts, the weight sync (gloo broadcast from learner rank 0 to the actor's vLLM worker) and its
rendezvous all cross nodes, as on a real cluster (where the nodes also differ in address). And two nodes
with GPUs on paper: each tensor-parallel engine's GPUs on one node.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from support.loop import GreedyRecordingActor
from support.ray_cluster import stop_cluster
from test_gpu_placement import flags, gpus, place
from test_loop import countdown_args

from oat_cpgd.cluster import ray_temp_dir, worker_env
from oat_cpgd.interface import run
from oat_cpgd.learners import Learner

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


def record_node(args, role: str) -> None:
    """The Ray node this role runs on, in the run folder."""
    path = Path(args.save_path) / args.wb_run_name / f"node_{role}.txt"
    path.write_text(ray.get_runtime_context().get_node_id())


class NodeRecordingActor(GreedyRecordingActor):
    def __init__(self, args, placement, actor_index: int = 0) -> None:
        super().__init__(args, placement, actor_index)
        record_node(args, f"actor_{actor_index}")


class NodeRecordingLearner(Learner):
    def __init__(self, args, placement, rank: int, schedule_steps) -> None:
        super().__init__(args, placement, rank, schedule_steps)
        record_node(args, f"learner_{rank}")


@pytest.fixture
def two_nodes(monkeypatch):
    """Two Ray nodes on this host, `add(**resources)` each (`cluster.add_node`'s options); torn down after."""
    # The Ray workers import this module's roles as the driver does.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    # Both nodes are on loopback; Ray would otherwise swap 127.0.0.1 in --ray_address for this host's
    # address, which the nodes do not listen on (the variable for the nodes, the constant it set at import for us).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr("ray._private.ray_constants.ENABLE_RAY_CLUSTER", False)
    temp_dir = ray_temp_dir()
    # Cluster writes its address where a bare `ray.init(address="auto")` looks (under RAY_TMPDIR): keep it in ours.
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    os.makedirs(os.path.join(temp_dir, "ray"))
    cluster = Cluster()

    def add(first: dict, second: dict) -> tuple:
        common = dict(num_cpus=1, include_dashboard=False, node_ip_address="127.0.0.1", temp_dir=temp_dir)
        nodes = cluster.add_node(**common, **first), cluster.add_node(**common, **second)  # the first is the head
        cluster.wait_for_nodes()
        return nodes

    try:
        yield cluster, add
    finally:
        ray.shutdown()
        cluster.shutdown()
        stop_cluster(temp_dir)  # anything of this cluster's left behind, and only this cluster's
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_actor_and_learners_on_separate_nodes(two_nodes, tiny_model_path, shared_data, tmp_path):
    cluster, add = two_nodes
    actor_node, learner_node = add({"resources": {"actor_node": 1}}, {"resources": {"learner_node": 2}})
    args = countdown_args(
        tiny_model_path, shared_data, tmp_path, "grpo",
        ray_address=cluster.address, actor_resources={"actor_node": 1}, learner_resources={"learner_node": 1},
    )  # fmt: skip
    run_dir = run(args, learner_cls=NodeRecordingLearner, actor_cls=NodeRecordingActor)

    nodes = {path.stem.removeprefix("node_"): path.read_text() for path in run_dir.glob("node_*.txt")}
    assert nodes == {
        "actor_0": actor_node.node_id,
        "learner_0": learner_node.node_id,
        "learner_1": learner_node.node_id,
    }
    assert actor_node.node_id != learner_node.node_id
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        # Each rollout came from the weights synced after the previous step, and after each sync the
        # actor's log-probs on the probe match learner rank 0's: the weights crossed the nodes.
        assert row["misc/rollout_weight_version"] == row["step"] - 1
        assert row["step"] == 1 or row["misc/sync_check_gap"] < 1e-3, row  # step 1 sampled unsynced weights
        assert row["misc/weight_sync_time"] > 0 and 0 <= row["actor/reward_mean"] <= 1


def test_two_nodes_keep_each_tensor_parallel_engine_on_one(two_nodes):
    """2 nodes x 2 GPUs (on paper): every engine's 2 GPUs on one node, collocated learners beside them."""
    cluster, add = two_nodes
    nodes = add({"num_gpus": 2}, {"num_gpus": 2})
    ray.init(address=cluster.address, runtime_env={"env_vars": worker_env()})
    learners, actors = place(flags(collocate=True, vllm_tensor_parallel_size=2))
    node_ids = {n.node_id for n in nodes}
    for j, actor in enumerate(actors):
        (engine_node,) = {worker["node"] for worker in actor["workers"]}
        assert engine_node in node_ids
        # Its learners (2j, 2j + 1) are on the same node and GPUs.
        assert {learners[2 * j]["node"], learners[2 * j + 1]["node"]} == {engine_node}
        assert gpus(actor) == sorted(gpus(learners[2 * j]) + gpus(learners[2 * j + 1]))
    assert {learner["node"] for learner in learners} == node_ids  # both nodes used, 2 ranks each
