"""Placement decided from the Ray cluster's resources (fake per-node resource dicts here), not the driver's devices."""

import json
import pickle

import pytest

from oat_cpgd.args import ConfigError, PPOArgs, parse_args
from oat_cpgd.learners.deepspeed_config import train_config
from oat_cpgd.placement import Placement, learner_threads, plan_placement

CPU_NODE = {"CPU": 16.0, "memory": 64e9}
GPU_NODE = {"CPU": 64.0, "GPU": 8.0, "memory": 512e9}


def flags(**values) -> PPOArgs:
    """Flags as a run attached to a cluster has them: resolved, the placement still to be decided."""
    defaults = dict(ray_address="10.0.0.1:6379", critic_type="grpo", train_batch_size=8, rollout_batch_size=8)
    args = PPOArgs(**{**defaults, **values})
    args.resolve()
    return args


def test_a_cluster_without_gpus_runs_everything_on_cpu():
    assert plan_placement([CPU_NODE, CPU_NODE], flags(gpus=2)) == Placement(False, 1, 2, 0, 0)
    assert plan_placement([CPU_NODE], flags(gpus=4, num_actors=2)) == Placement(False, 2, 4, 0, 0)


def test_a_gpu_cluster_splits_the_gpus_between_actors_and_learners():
    assert plan_placement([GPU_NODE], flags(gpus=8)) == Placement(True, 4, 4, 1, 1)
    assert plan_placement([GPU_NODE], flags(gpus=8, num_actors=2)) == Placement(True, 2, 6, 1, 1)


def test_a_cpu_only_head_with_gpu_workers_places_on_the_workers_gpus():
    """The case this is for: the driver's node has no GPU, the cluster has 2 x 4."""
    nodes = [CPU_NODE, {**GPU_NODE, "GPU": 4.0}, {**GPU_NODE, "GPU": 4.0}]
    assert plan_placement(nodes, flags(gpus=8)) == Placement(True, 4, 4, 1, 1)


def test_collocated_roles_share_each_gpu():
    assert plan_placement([GPU_NODE], flags(gpus=8, collocate=True)) == Placement(True, 8, 8, 0.5, 0.5)
    assert plan_placement([CPU_NODE], flags(gpus=2, collocate=True)) == Placement(False, 1, 2, 0, 0)


@pytest.mark.parametrize(
    "values, placement, cores, gpus, threads",
    [
        # CPU, synchronous: the learner ranks split the node's cores (Ray's default would be 1 each).
        (dict(gpus=1), Placement(False, 1, 1, 0, 0), 2, 0, 2),
        (dict(gpus=2), Placement(False, 1, 2, 0, 0), 16, 0, 8),
        # Asynchronous: the actors generate while the learners train, so the learners take half.
        (dict(gpus=1, asynchronous=True), Placement(False, 1, 1, 0, 0), 16, 0, 8),
        (dict(gpus=1, asynchronous=True), Placement(False, 1, 1, 0, 0), 1, 0, 1),
        # GPUs: only the ranks this node's GPUs hold share its cores.
        (dict(gpus=16), Placement(True, 8, 8, 1, 1), 64, 8, 8),
        (dict(gpus=8, collocate=True), Placement(True, 8, 8, 0.5, 0.5), 64, 8, 8),
        (dict(gpus=8), Placement(True, 4, 4, 1, 1), 64, 8, 16),
        # Set by hand: taken as given.
        (dict(gpus=2, learner_threads=3), Placement(False, 1, 2, 0, 0), 2, 0, 3),
    ],
)
def test_learner_threads_share_the_node_cores(values, placement, cores, gpus, threads):
    assert learner_threads(flags(**values), placement, cores, gpus) == threads


@pytest.mark.parametrize(
    "nodes, values, words",
    [
        # --gpus 8 on 4 GPUs: the numbers named.
        ([CPU_NODE, {"GPU": 4.0}], dict(gpus=8), ["--gpus 8", "8 GPUs", "4 actors", "4 learner ranks", "has 4"]),
        # 4 actors x 2 GPUs + 4 learners: 12 GPUs for --gpus 8.
        ([GPU_NODE], dict(gpus=8, vllm_tensor_parallel_size=2), ["12 GPUs", "4 actors x 2", "has 8"]),
        # Enough GPUs in all, but no node has the 2 one engine needs.
        ([{"GPU": 1.0}] * 6, dict(gpus=4, num_actors=1, vllm_tensor_parallel_size=2), ["--vllm_tensor_parallel_size 2", "largest node has 1"]),
        ([GPU_NODE], dict(gpus=2, num_actors=2), ["--gpus 2", "no GPU for the learners", "2 actors"]),
    ],
)  # fmt: skip
def test_a_cluster_short_of_gpus_is_refused_with_the_numbers(nodes, values, words):
    with pytest.raises(ConfigError) as error:
        plan_placement(nodes, flags(**values))
    for word in words:
        assert word in str(error.value), str(error.value)


def test_custom_resources_are_counted_per_actor_and_learner_rank():
    args = flags(gpus=2, actor_resources={"actor_node": 1}, learner_resources={"learner_node": 1})
    head, worker = {**CPU_NODE, "actor_node": 1.0}, {**CPU_NODE, "learner_node": 1.0}
    with pytest.raises(ConfigError, match=r"2 'learner_node' \(1 actors x 0 \+ 2 learner ranks x 1\).* has 1"):
        plan_placement([head, worker], args)
    assert plan_placement([head, {**worker, "learner_node": 2.0}], args) == Placement(False, 1, 2, 0, 0)


def test_batch_checks_wait_for_the_learner_ranks_the_cluster_gives():
    """8 responses per optimizer step at 2 per rank: 4 learner ranks fit (8 GPUs), 8 CPU learner ranks do not."""
    args = flags(gpus=8, train_batch_size_per_device=2)
    args.place(plan_placement([GPU_NODE], args))
    assert args.learner_ranks == 4 and args.actor_count == 4 and args.on_cuda
    with pytest.raises(ConfigError, match="--train_batch_size_per_device"):
        args.place(plan_placement([CPU_NODE], args))


def test_the_roles_receive_the_decision_with_their_args():
    args = flags(gpus=8, adam_offload=True)
    with pytest.raises(RuntimeError, match="decided from the Ray cluster"):
        args.on_cuda  # noqa: B018 (attached, nothing is decided before the cluster is seen)
    args.place(plan_placement([CPU_NODE, GPU_NODE], args))
    received = pickle.loads(pickle.dumps(args))  # as Ray hands them to an actor or learner
    assert received.placement == Placement(True, 4, 4, 1, 1)
    # The learner's DeepSpeed config follows it, though this process sees no GPU.
    config = train_config(received, received.learner_ranks, 1e-6)
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["optimizer"]["params"]["torch_adam"] is False
    assert "placement" not in json.loads(args.to_json())  # config.json: the flags, not where they ran


def test_dry_run_attached_to_a_cluster_leaves_the_placement_to_it(capsys, monkeypatch):
    """On a CPU machine 8 learner ranks x 2 do not divide 8; on a cluster with GPUs 4 would."""
    monkeypatch.setattr("oat_cpgd.placement.local_nodes", lambda: [CPU_NODE])
    argv = "--gpus 8 --train_batch_size 8 --train_batch_size_per_device 2 --rollout_batch_size 8 --dry_run".split()
    with pytest.raises(SystemExit) as exit_info:
        parse_args(PPOArgs, argv=[*argv, "--ray_address", "10.0.0.1:6379"])
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["gpus"] == 8
    assert "placement: decided from the cluster's resources once attached to --ray_address 10.0.0.1:6379" in err
    with pytest.raises(SystemExit) as exit_info:  # a local run: this (CPU) machine is the cluster, checked now
        parse_args(PPOArgs, argv=argv)
    assert exit_info.value.code == 2
    assert "learner ranks (8, from --gpus)" in capsys.readouterr().err
