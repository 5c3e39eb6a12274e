"""The placement plan, decided from the Ray cluster's resources (fake per-node resource dicts here), not the
driver's devices; tests/test_gpu_placement.py books such plans on a Ray cluster with 8 (fake) GPUs."""

import json
import pickle

import pytest

from oat_cpgd.args import ConfigError, PPOArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.learners.deepspeed_config import train_config
from oat_cpgd.placement import (
    CPU_SLIVER,
    Placement,
    actors_only_placement,
    by_node,
    describe,
    learner_threads,
    plan_placement,
)

CPU_NODE = {"CPU": 16.0, "memory": 64e9}
GPU_NODE = {"CPU": 64.0, "GPU": 8.0, "memory": 512e9}


def flags(**values) -> PPOArgs:
    """Flags as a run attached to a cluster has them: resolved, the placement still to be decided."""
    defaults = dict(ray_address="10.0.0.1:6379", critic_type="grpo", train_batch_size=8, rollout_batch_size=8)
    args = PPOArgs(**{**defaults, **values})
    args.resolve()
    return args


def gpus_of(placement: Placement, role: str) -> list[tuple[int, ...]]:
    return list(placement.learner_bundles if role == "learner" else placement.actor_bundles)


def test_a_cluster_without_gpus_gives_each_role_a_cpu_sliver():
    placement = plan_placement([CPU_NODE, CPU_NODE], flags(gpus=2))
    assert not placement.on_cuda and (placement.learner_ranks, placement.actor_count) == (2, 1)
    assert placement.bundles == ({"CPU": CPU_SLIVER},) * 3
    assert placement.learner_bundles == (0, 1) and placement.actor_bundles == ((2,),)
    assert placement.gpu_share == placement.actor_process_gpus == 0
    assert plan_placement([CPU_NODE], flags(gpus=4, num_actors=2)).actor_bundles == ((4,), (5,))


def test_split_gpus_go_half_to_the_actors_and_the_rest_to_the_learners():
    placement = plan_placement([GPU_NODE], flags(gpus=8))
    assert placement.bundles == ({"GPU": 1.0},) * 8
    assert placement.learner_bundles == (0, 1, 2, 3) and placement.actor_bundles == ((4,), (5,), (6,), (7,))
    assert placement.gpu_share == placement.actor_process_gpus == 1
    assert placement.vllm_gpu_ratio == 0.9  # alone on its GPU
    assert (
        plan_placement([GPU_NODE], flags(gpus=8, num_actors=2, rollout_batch_size=6, train_batch_size=48)).learner_ranks
        == 6
    )


def test_collocated_learner_i_and_actor_i_share_bundle_i_at_half_a_gpu_each():
    """GPU_REVIEW item 1: Ray gave fractional requests without a placement group the best-fitting GPU,
    so learners landed on GPUs [0, 0, 1, 1] and actors on [2, 2, 3, 3]."""
    placement = plan_placement([GPU_NODE], flags(gpus=8, collocate=True))
    assert placement.learner_bundles == tuple(range(8))
    assert placement.actor_bundles == tuple((i,) for i in range(8))
    assert placement.gpu_share == placement.actor_process_gpus == 0.5
    assert placement.vllm_gpu_ratio == 0.5  # the learner's states stay resident


def test_tensor_parallel_actors_hold_their_gpus_through_their_workers():
    """GPU_REVIEW items 3 and 11: --gpus 8 with TP 2 was refused as asking for 12 GPUs, and collocated
    TP 2 gave each engine half of one GPU."""
    collocated = plan_placement([GPU_NODE], flags(gpus=8, collocate=True, vllm_tensor_parallel_size=2))
    assert collocated.learner_ranks == 8
    assert collocated.actor_bundles == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert collocated.actor_process_gpus == 0 and collocated.gpu_share == 0.5  # each vLLM worker's share
    split = plan_placement([GPU_NODE], flags(gpus=8, vllm_tensor_parallel_size=2))
    assert split.learner_bundles == (0, 1, 2, 3) and split.actor_bundles == ((4, 5), (6, 7))
    assert split.actor_process_gpus == 0 and split.gpu_share == 1
    four = plan_placement([GPU_NODE], flags(gpus=8, vllm_tensor_parallel_size=4))  # 1 engine of 4, 4 learners
    assert four.actor_bundles == ((4, 5, 6, 7),) and four.learner_ranks == 4


def test_a_cpu_only_head_with_gpu_workers_places_on_the_workers_gpus():
    """The case this is for: the driver's node has no GPU, the cluster has 2 x 4."""
    nodes = [CPU_NODE, {**GPU_NODE, "GPU": 4.0}, {**GPU_NODE, "GPU": 4.0}]
    placement = plan_placement(nodes, flags(gpus=8))
    assert placement.on_cuda and placement.learner_ranks == 4 and placement.actor_count == 4


@pytest.mark.parametrize(
    "values, ranks, cores, threads",
    [
        # CPU, synchronous: the learner ranks on a node split its cores (Ray's default would be 1 each).
        (dict(gpus=1), 1, 2, 2),
        (dict(gpus=2), 2, 16, 8),
        # Asynchronous: the actors generate while the learners train, so the learners take half.
        (dict(gpus=1, asynchronous=True), 1, 16, 8),
        (dict(gpus=1, asynchronous=True), 1, 1, 1),
        (dict(gpus=16), 8, 64, 8),
        # Set by hand: taken as given.
        (dict(gpus=2, learner_threads=3), 2, 2, 3),
    ],
)
def test_learner_threads_share_the_node_cores(values, ranks, cores, threads):
    assert learner_threads(flags(**values), ranks, cores) == threads


@pytest.mark.parametrize(
    "nodes, values, words",
    [
        # --gpus 8 on 4 GPUs: the numbers named.
        ([CPU_NODE, {"GPU": 4.0}], dict(gpus=8), ["--gpus 8", "8 GPUs", "4 actors x 1", "4 learner ranks", "has 4"]),
        # Enough GPUs in all, but no node has the 2 one engine needs.
        ([{"GPU": 1.0}] * 6, dict(gpus=4, num_actors=1, vllm_tensor_parallel_size=2), ["--vllm_tensor_parallel_size 2", "largest node has 1"]),
        ([GPU_NODE], dict(gpus=2, num_actors=2), ["--gpus 2", "no GPU for the learners", "2 actors"]),
        ([GPU_NODE], dict(gpus=2, vllm_tensor_parallel_size=2), ["--gpus 2", "no GPU for the learners", "= 2 GPUs"]),
        ([GPU_NODE], dict(gpus=6, collocate=True, vllm_tensor_parallel_size=4), ["--gpus 6", "multiple of --vllm_tensor_parallel_size 4"]),
        ([GPU_NODE], dict(gpus=4, collocate=True, num_actors=3, vllm_tensor_parallel_size=2), ["--num_actors 3", "6 GPUs", "--gpus 4"]),
        ([CPU_NODE], dict(gpus=2, vllm_tensor_parallel_size=2), ["--vllm_tensor_parallel_size 2", "has none"]),
    ],
)  # fmt: skip
def test_a_split_that_cannot_be_placed_is_refused_with_the_numbers(nodes, values, words):
    with pytest.raises(ConfigError) as error:
        plan_placement(nodes, flags(**values))
    for word in words:
        assert word in str(error.value), str(error.value)


def test_custom_resources_go_into_the_bundles_of_the_roles_that_ask_them():
    args = flags(gpus=2, actor_resources={"actor_node": 1}, learner_resources={"learner_node": 1})
    head, worker = {**CPU_NODE, "actor_node": 1.0}, {**CPU_NODE, "learner_node": 1.0}
    with pytest.raises(ConfigError, match=r"2 'learner_node' \(1 actors x 0 \+ 2 learner ranks x 1\).* has 1"):
        plan_placement([head, worker], args)
    placement = plan_placement([head, {**worker, "learner_node": 2.0}], args)
    learner, actor = {"CPU": CPU_SLIVER, "learner_node": 1}, {"CPU": CPU_SLIVER, "actor_node": 1}
    assert placement.bundles == (learner, learner, actor)
    # On GPUs: a tensor-parallel actor's resources in its first bundle; collocated bundles hold both roles'.
    gpu_args = flags(
        gpus=4, collocate=True, vllm_tensor_parallel_size=2, actor_resources={"a": 1}, learner_resources={"l": 1}
    )
    bundles = plan_placement([{**GPU_NODE, "a": 2, "l": 4}], gpu_args).bundles
    assert bundles == ({"GPU": 1, "l": 1, "a": 1}, {"GPU": 1, "l": 1}, {"GPU": 1, "l": 1, "a": 1}, {"GPU": 1, "l": 1})


def test_batch_checks_wait_for_the_learner_ranks_the_cluster_gives():
    """8 responses per optimizer step at 2 per rank: 4 learner ranks fit (8 GPUs), 8 CPU learner ranks do not."""
    args = flags(gpus=8, train_batch_size_per_device=2)
    assert plan_placement([GPU_NODE], args).learner_ranks == 4
    with pytest.raises(ConfigError, match="--train_batch_size_per_device"):
        plan_placement([CPU_NODE], args)


def test_the_roles_receive_the_placement_and_the_deepspeed_config_follows_it():
    args = flags(gpus=8, adam_offload=True)
    placement = plan_placement([CPU_NODE, GPU_NODE], args)
    received = pickle.loads(pickle.dumps(placement))  # as Ray hands it to an actor or learner
    assert received == placement
    # The learner's DeepSpeed config follows it, though this process sees no GPU.
    config = train_config(args, received.learner_ranks, 1e-6, received.on_cuda)
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["optimizer"]["params"]["torch_adam"] is False
    assert "placement" not in json.loads(args.to_json())  # config.json: the flags, not where they ran
    assert not hasattr(args, "placement")


def test_evaluation_gives_every_gpu_to_an_engine():
    """GPU_REVIEW item 15: evaluate.py defaulted to --collocate, with its packing and start-up race."""
    placement = actors_only_placement([GPU_NODE], flags(gpus=8))
    assert placement.learner_ranks == 0 and not placement.collocate
    assert placement.actor_bundles == tuple((i,) for i in range(8)) and placement.actor_process_gpus == 1
    tp = actors_only_placement([GPU_NODE], flags(gpus=8, vllm_tensor_parallel_size=2))
    assert tp.actor_bundles == ((0, 1), (2, 3), (4, 5), (6, 7)) and tp.actor_process_gpus == 0
    assert actors_only_placement([CPU_NODE], flags(gpus=8)).actor_bundles == ((0,),)


def test_bundles_alike_are_numbered_by_node_so_tensor_parallel_pairs_share_one():
    """Ray may put a group's bundles on nodes in any order: here bundles 0 and 2 on node B."""
    bundles = [{"GPU": 1.0}] * 4
    locations = [("B", "10.0.0.2", (0,)), ("A", "10.0.0.1", (0,)), ("B", "10.0.0.2", (1,)), ("A", "10.0.0.1", (1,))]
    order = by_node(bundles, locations)
    assert order == [1, 3, 0, 2]  # planned 0, 1 -> node A's GPUs 0, 1; planned 2, 3 -> node B's
    # Bundles that differ (a learner's custom resource) are only renumbered among themselves.
    mixed = [{"GPU": 1.0, "l": 1}, {"GPU": 1.0}, {"GPU": 1.0, "l": 1}, {"GPU": 1.0}]
    assert sorted(by_node(mixed, locations)[0::2]) == [0, 2] and sorted(by_node(mixed, locations)[1::2]) == [1, 3]


def test_the_plan_is_described_one_line_per_role():
    placement = plan_placement([GPU_NODE], flags(gpus=4, collocate=True, vllm_tensor_parallel_size=2))
    lines = describe(placement, ["10.0.0.2"] * 4, [(3,), (2,), (1,), (0,)])
    assert lines == [
        "placement: learner 0 -> node 10.0.0.2, GPUs [3]",
        "placement: learner 1 -> node 10.0.0.2, GPUs [2]",
        "placement: learner 2 -> node 10.0.0.2, GPUs [1]",
        "placement: learner 3 -> node 10.0.0.2, GPUs [0]",
        "placement: actor 0 -> node 10.0.0.2, GPUs [2, 3]",
        "placement: actor 1 -> node 10.0.0.2, GPUs [0, 1]",
    ]


def test_a_local_dry_run_prints_the_plan_and_a_local_run_is_checked_at_parse_time(capsys, monkeypatch):
    """On a CPU machine 8 learner ranks x 2 do not divide 8; attached to a cluster with GPUs 4 would."""
    monkeypatch.setattr("oat_cpgd.cli.local_nodes", lambda: [CPU_NODE])
    argv = "--gpus 2 --train_batch_size 8 --train_batch_size_per_device 2 --rollout_batch_size 8 --dry_run".split()
    with pytest.raises(SystemExit) as exit_info:
        parse_args(PPOArgs, argv=argv)
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["gpus"] == 2
    assert err.splitlines() == [
        "placement: learner 0 -> node 127.0.0.1, GPUs []",
        "placement: learner 1 -> node 127.0.0.1, GPUs []",
        "placement: actor 0 -> node 127.0.0.1, GPUs []",
    ]
    with pytest.raises(SystemExit) as exit_info:  # a local run: this (CPU) machine is the cluster, checked now
        parse_args(PPOArgs, argv=[*argv[:1], "8", *argv[2:-1]])
    assert exit_info.value.code == 2
    assert "learner ranks (8, from --gpus)" in capsys.readouterr().err
    # Attached to a cluster, the parse leaves the check to the cluster's resources.
    assert parse_args(PPOArgs, argv=[*argv[:1], "8", *argv[2:-1], "--ray_address", "10.0.0.1:6379"]).gpus == 8
