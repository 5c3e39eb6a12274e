"""Where the roles run, as a plain value.

`plan_placement` turns the flags and the cluster's resources into a `Placement`: how many learner
ranks and actors there are and which bundle of one Ray placement group each uses. It needs no Ray:
oat_cpgd.cluster books the bundles (`reserve`) and starts the roles in them.

The GPU arithmetic (G = --gpus, T = --vllm_tensor_parallel_size), a bundle per GPU:
- collocated: learner i uses bundle i, and actor j bundles jT .. jT + T - 1 (G / T actors by
  default). A learner and an actor sharing a GPU each ask half of it in that bundle, so Ray can
  never pack two learners, or two actors, onto one GPU.
- split: the actors use A x T bundles (A = G / 2 / T by default) and the learners the other G - A T.
- a tensor-parallel actor's process holds no GPU itself: vLLM's Ray executor starts one worker per
  GPU in the actor's bundles (VLLM_RAY_BUNDLE_INDICES), as OpenRLHF does
  (openrlhf/trainer/ray/vllm_engine/factory.py, base.py).
- a cluster without GPUs gets a bundle per role asking a sliver of a CPU (the roles share the
  cores), which fixes each role's node; --gpus then counts the learner ranks.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from oat_cpgd.args import Args, need

SHARED_GPU = 0.5
"""What a collocated learner and a collocated vLLM worker each ask of the GPU they share."""
CPU_SLIVER = 0.01
"""A role's bundle on a cluster without GPUs: enough to pin it to a node, not to take a core."""


@dataclass(frozen=True)
class Placement:
    """Where a run's roles go: the bundles of one Ray placement group and which role uses which."""

    on_cuda: bool
    """The cluster has GPUs: the actors and learners run on them; otherwise everything runs on CPU."""
    collocate: bool
    """Each GPU holds a learner rank and (a share of) an actor, which sleeps while the learner trains."""
    tensor_parallel_size: int
    """GPUs per vLLM engine (1 on CPU)."""
    bundles: tuple[Mapping[str, float], ...]
    """The placement group's bundles, as Ray takes them: a GPU each, or a CPU sliver each."""
    learner_bundles: tuple[int, ...]
    """The bundle of each learner rank."""
    actor_bundles: tuple[tuple[int, ...], ...]
    """The bundles of each actor: its engine's GPUs on CUDA."""

    @classmethod
    def learners_alone(cls, ranks: int, on_cuda: bool) -> Placement:
        """Learner ranks started by another launcher (torchrun: tests, benchmarks), a device each, no actors."""
        return cls(on_cuda, False, 1, (device_bundle(on_cuda),) * ranks, tuple(range(ranks)), ())

    @property
    def learner_ranks(self) -> int:
        return len(self.learner_bundles)

    @property
    def actor_count(self) -> int:
        return len(self.actor_bundles)

    @property
    def gpu_share(self) -> float:
        """What a learner rank, and each vLLM worker, asks of its bundle's GPU."""
        if not self.on_cuda:
            return 0
        return SHARED_GPU if self.collocate else 1

    @property
    def actor_process_gpus(self) -> float:
        """The actor's own process holds its engine's GPU, unless tensor-parallel workers hold them."""
        return self.gpu_share if self.tensor_parallel_size == 1 else 0

    @property
    def vllm_gpu_ratio(self) -> float:
        """--vllm_gpu_ratio's default: the share of each GPU's memory vLLM takes while awake.

        Alone on its GPUs vLLM takes most of them (vLLM's own default is 0.9). Collocated, the
        learner's weights and optimizer states stay resident while vLLM generates, so vLLM gets half
        (TRL's colocate mode defaults to 0.3-0.55, OpenRLHF's examples use 0.5-0.6).
        """
        return 0.5 if self.collocate else 0.9


def plan_placement(nodes: Sequence[Mapping[str, float]], args: Args) -> Placement:
    """The placement of `args`'s roles on a cluster whose nodes have these resources (as `ray.nodes()`
    reports them: "CPU", "GPU", custom ones). Raises ConfigError, naming the flags and the numbers, when
    the cluster lacks what they ask for or the batch sizes do not split over the learner ranks."""
    total = total_resources(nodes)
    if total["GPU"] == 0:
        placement = cpu_placement(args)
    else:
        placement = gpu_placement(args)
        check_gpus(placement, nodes, total["GPU"], args)
    check_custom_resources(placement, total, args)
    check_batch_split(args, placement.learner_ranks)
    return placement


def actors_only_placement(nodes: Sequence[Mapping[str, float]], args: Args) -> Placement:
    """Engines alone, for evaluation: every one of --gpus GPUs serves an engine (--gpus / T of them,
    or --num_actors); without GPUs, --num_actors engines (default 1)."""
    total = total_resources(nodes)
    on_cuda, tp = total["GPU"] > 0, args.vllm_tensor_parallel_size if total["GPU"] > 0 else 1
    actors = args.num_actors if args.num_actors > 0 else (args.gpus // tp if on_cuda else 1)
    need(
        actors >= 1 and (not on_cuda or actors * tp <= args.gpus),
        f"--gpus {args.gpus} cannot hold {actors} engines of --vllm_tensor_parallel_size {tp} GPUs.",
    )
    bundles = [device_bundle(on_cuda) for _ in range(actors * tp)]
    actor_bundles = engine_bundles(0, actors, tp)
    for own in actor_bundles:
        add_resources(bundles[own[0]], args.actor_resources)
    placement = Placement(on_cuda, False, tp, tuple(bundles), (), actor_bundles)
    if on_cuda:
        check_gpus(placement, nodes, total["GPU"], args)
    check_custom_resources(placement, total, args)
    return placement


def cpu_placement(args: Args) -> Placement:
    """--gpus learner ranks and --num_actors actors (default 1), a bundle each, sharing the cores."""
    need(
        args.vllm_tensor_parallel_size == 1,
        f"--vllm_tensor_parallel_size {args.vllm_tensor_parallel_size} splits an engine over GPUs; the Ray cluster "
        "has none (vLLM's Ray executor refuses the CPU platform): use 1.",
    )
    actors = args.num_actors if args.num_actors > 0 else 1
    learner = {**device_bundle(False), **args.learner_resources}
    actor = {**device_bundle(False), **args.actor_resources}
    return Placement(
        on_cuda=False,
        collocate=args.collocate,
        tensor_parallel_size=1,
        bundles=(learner,) * args.gpus + (actor,) * actors,
        learner_bundles=tuple(range(args.gpus)),
        actor_bundles=tuple((args.gpus + j,) for j in range(actors)),
    )


def gpu_placement(args: Args) -> Placement:
    """A bundle per GPU; see the module's docstring for who uses which."""
    gpus, tp = args.gpus, args.vllm_tensor_parallel_size
    if args.collocate:
        need(
            gpus % tp == 0,
            f"--collocate shares every GPU between a learner rank and an engine: --gpus {gpus} must be a "
            f"multiple of --vllm_tensor_parallel_size {tp}.",
        )
        actors = args.num_actors if args.num_actors > 0 else gpus // tp
        need(
            actors * tp <= gpus,
            f"--num_actors {actors} x --vllm_tensor_parallel_size {tp} = {actors * tp} GPUs, but --collocate "
            f"shares only --gpus {gpus}.",
        )
        learner_bundles, first_actor_bundle = tuple(range(gpus)), 0
    else:
        actors = args.num_actors if args.num_actors > 0 else max(1, gpus // 2 // tp)
        learners = gpus - actors * tp
        need(
            learners >= 1,
            f"--gpus {gpus} leaves no GPU for the learners after {actors} actors (--num_actors) x "
            f"--vllm_tensor_parallel_size {tp} = {actors * tp} GPUs; use --collocate or more --gpus.",
        )
        learner_bundles, first_actor_bundle = tuple(range(learners)), learners
    bundles = [device_bundle(True) for _ in range(gpus)]
    # Custom resources go to the bundle of the role that asks them (an actor's: its first GPU's).
    for b in learner_bundles:
        add_resources(bundles[b], args.learner_resources)
    actor_bundles = engine_bundles(first_actor_bundle, actors, tp)
    for own in actor_bundles:
        add_resources(bundles[own[0]], args.actor_resources)
    return Placement(True, args.collocate, tp, tuple(bundles), learner_bundles, actor_bundles)


def device_bundle(on_cuda: bool) -> dict[str, float]:
    """One bundle's resources: a GPU, or on a cluster without GPUs a sliver of a CPU."""
    return {"GPU": 1.0} if on_cuda else {"CPU": CPU_SLIVER}


def engine_bundles(first: int, actors: int, tp: int) -> tuple[tuple[int, ...], ...]:
    """Each of `actors` engines' `tp` consecutive bundles, from bundle `first` on."""
    return tuple(tuple(range(first + j * tp, first + (j + 1) * tp)) for j in range(actors))


def add_resources(bundle: dict[str, float], resources: Mapping[str, float]) -> None:
    for name, amount in resources.items():
        bundle[name] = bundle.get(name, 0) + amount


def total_resources(nodes: Sequence[Mapping[str, float]]) -> Counter:
    total: Counter = Counter()
    for node in nodes:
        total.update(node)
    return total


def check_gpus(placement: Placement, nodes: Sequence[Mapping[str, float]], cluster_gpus: float, args: Args) -> None:
    wanted = len(placement.bundles)
    need(
        wanted <= cluster_gpus,
        f"--gpus {args.gpus} asks for {wanted} GPUs ({placement.actor_count} actors x {placement.tensor_parallel_size} "
        f"GPUs{' shared with' if placement.collocate else ' +'} {placement.learner_ranks} learner ranks) but the Ray "
        f"cluster has {cluster_gpus:g}.",
    )
    largest = max(node.get("GPU", 0) for node in nodes)
    need(
        placement.tensor_parallel_size <= largest,
        f"--vllm_tensor_parallel_size {placement.tensor_parallel_size} needs that many GPUs on one node; "
        f"the Ray cluster's largest node has {largest:g}.",
    )


def check_custom_resources(placement: Placement, total: Mapping[str, float], args: Args) -> None:
    wanted = total_resources(placement.bundles)
    for name in sorted({*args.actor_resources, *args.learner_resources}):
        per_actor, per_learner = args.actor_resources.get(name, 0), args.learner_resources.get(name, 0)
        need(
            wanted[name] <= total[name],
            f"--actor_resources/--learner_resources ask for {wanted[name]:g} {name!r} ({placement.actor_count} actors "
            f"x {per_actor:g} + {placement.learner_ranks} learner ranks x {per_learner:g}) but the Ray cluster has "
            f"{total[name]:g}.",
        )


def check_batch_split(args: Args, learner_ranks: int) -> None:
    """The batch flags that depend on how many learner ranks the placement gives."""
    per_step = args.train_batch_size_per_device * learner_ranks
    need(
        args.train_batch_size % per_step == 0,
        f"--train_batch_size ({args.train_batch_size}) must be divisible by --train_batch_size_per_device "
        f"({args.train_batch_size_per_device}) x learner ranks ({learner_ranks}, from --gpus).",
    )
    need(
        args.rollout_batch_size % learner_ranks == 0,
        f"--rollout_batch_size ({args.rollout_batch_size}) must be divisible by the learner ranks "
        f"({learner_ranks}, from --gpus) so each rank gets whole groups of --num_samples responses.",
    )


def local_nodes() -> list[dict[str, float]]:
    """This machine as the one node of the private cluster `oat_cpgd.cluster.start_local_ray` would start."""
    import torch

    return [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}]


def describe(placement: Placement, nodes: Sequence[str], gpu_ids: Sequence[Sequence[int]]) -> list[str]:
    """The plan, one line per role, given each bundle's node and GPUs."""

    def where(bundles: Sequence[int]) -> str:
        node = ", ".join(dict.fromkeys(nodes[b] for b in bundles))
        return f"node {node}, GPUs {sorted(gpu for b in bundles for gpu in gpu_ids[b])}"

    learners = [f"placement: learner {i} -> {where([b])}" for i, b in enumerate(placement.learner_bundles)]
    actors = [f"placement: actor {j} -> {where(bundles)}" for j, bundles in enumerate(placement.actor_bundles)]
    return learners + actors


def describe_locally(placement: Placement) -> list[str]:
    """The plan on this machine, before a cluster exists: bundle k on CUDA is the k-th GPU."""
    gpu_ids = [(k,) if placement.on_cuda else () for k in range(len(placement.bundles))]
    return describe(placement, ["127.0.0.1"] * len(placement.bundles), gpu_ids)


def by_node(bundles: Sequence[Mapping[str, float]], locations: Sequence[tuple[str, str, tuple[int, ...]]]) -> list[int]:
    """For each planned bundle, the real bundle it becomes: among bundles alike, in node and GPU order."""
    alike: dict[tuple, list[int]] = defaultdict(list)
    for b, bundle in enumerate(bundles):
        alike[tuple(sorted(bundle.items()))].append(b)
    order = list(range(len(bundles)))
    for planned in alike.values():
        in_order = sorted(planned, key=lambda k: (locations[k][1], locations[k][0], locations[k][2], k))
        for b, real in zip(planned, in_order, strict=True):
            order[b] = real
    return order


def learner_threads(args: Args, ranks_on_node: int, node_cores: int) -> int:
    """Torch threads per learner process (--learner_threads, or automatic: see its help).

    Ray sets OMP_NUM_THREADS=1 in actors that ask for no CPU, as learners do: one core of many
    would train. The learner ranks on a node share its cores.
    """
    if args.learner_threads > 0:
        return args.learner_threads
    share = node_cores // ranks_on_node
    return max(1, share // 2 if args.asynchronous else share)
