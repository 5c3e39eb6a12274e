"""Where the roles run: the Ray cluster (private and local, or attached), the placement of actors and learners,
and the handle through which the learners reach the actors."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from oat_cpgd.args import Args, PPOArgs, need

logger = logging.getLogger(__name__)

# Environment the Ray workers need: caches inside the work tree, offline mode, allocator tuning.
FORWARDED_ENV_PREFIXES = (
    "HF_",
    "TRANSFORMERS_",
    "VLLM_",
    "TORCH_",
    "XDG_CACHE_HOME",
    "WANDB_",
    "MALLOC_",
    "TOKENIZERS_",
)


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    # User oracles (`--oracle my_module:MyOracle`) import from the launch directory, as in the driver.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    return env


def ray_temp_dir() -> str:
    """A fresh folder for Ray's session files, in RAY_TMPDIR (the work tree) when short enough.

    Ray puts unix sockets below it, and socket paths must stay under ~107 characters.
    """
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    if len(base) > 32:
        logging.getLogger(__name__).warning(
            "RAY_TMPDIR %s is too long for Ray's socket paths; using %s", base, tempfile.gettempdir()
        )
        base = tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="ray-", dir=base)


def start_local_ray() -> str:
    """Start a private single-machine cluster, all its traffic on loopback; returns its temp dir."""
    temp_dir = ray_temp_dir()
    ray.init(
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": worker_env()},
    )
    return temp_dir


@contextlib.contextmanager
def ray_session(args: PPOArgs) -> Iterator[None]:
    """Attach to --ray_address, reuse a running session, or start a local cluster and tear it down."""
    if ray.is_initialized():
        yield
        return
    temp_dir = None
    if args.ray_address:
        ray.init(address=args.ray_address, runtime_env={"env_vars": worker_env()})
    else:
        temp_dir = start_local_ray()
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class Placement:
    """Where a run's roles go and what each asks Ray for, decided by `plan_placement` from the cluster's resources."""

    on_cuda: bool
    """The cluster has GPUs: the actors and learners run on them; otherwise everything runs on CPU."""
    actor_count: int
    learner_ranks: int
    gpus_per_actor: float
    gpus_per_learner: float


def plan_placement(nodes: Sequence[Mapping[str, float]], args: Args) -> Placement:
    """The placement of `args`'s roles on a cluster whose nodes have these resources (as `ray.nodes()`
    reports them: "CPU", "GPU", custom ones). Raises ConfigError, naming the flags and the numbers, when
    the cluster lacks what they ask for."""
    total = total_resources(nodes)
    if total["GPU"] == 0:
        # --gpus counts learner processes; the actors share the CPU cores.
        placement = Placement(False, args.num_actors if args.num_actors > 0 else 1, args.gpus, 0, 0)
    else:
        default_actors = args.gpus if args.collocate else max(1, args.gpus // 2)
        actor_count = args.num_actors if args.num_actors > 0 else default_actors
        placement = Placement(
            on_cuda=True,
            actor_count=actor_count,
            learner_ranks=args.gpus if args.collocate else args.gpus - actor_count,
            # Collocated, an actor and a learner share each GPU (vLLM sleeps while the learner trains).
            gpus_per_actor=0.5 if args.collocate else args.vllm_tensor_parallel_size,
            gpus_per_learner=0.5 if args.collocate else 1,
        )
        check_gpus(placement, nodes, total["GPU"], args)
    check_custom_resources(placement, total, args)
    return placement


def total_resources(nodes: Sequence[Mapping[str, float]]) -> Counter:
    total: Counter = Counter()
    for node in nodes:
        total.update(node)
    return total


def check_gpus(placement: Placement, nodes: Sequence[Mapping[str, float]], cluster_gpus: float, args: Args) -> None:
    need(
        placement.learner_ranks >= 1,
        f"--gpus {args.gpus} leaves no GPU for the learners after {placement.actor_count} actors "
        "(--num_actors); use --collocate or more --gpus.",
    )
    wanted = placement.actor_count * placement.gpus_per_actor + placement.learner_ranks * placement.gpus_per_learner
    need(
        wanted <= cluster_gpus,
        f"--gpus {args.gpus} asks for {wanted:g} GPUs ({placement.actor_count} actors x {placement.gpus_per_actor:g} "
        f"+ {placement.learner_ranks} learner ranks x {placement.gpus_per_learner:g}) but the Ray cluster has "
        f"{cluster_gpus:g}.",
    )
    largest = max(node.get("GPU", 0) for node in nodes)
    need(
        placement.gpus_per_actor <= largest,
        f"--vllm_tensor_parallel_size {args.vllm_tensor_parallel_size} needs that many GPUs on one node; "
        f"the Ray cluster's largest node has {largest:g}.",
    )


def check_custom_resources(placement: Placement, total: Mapping[str, float], args: Args) -> None:
    for name in sorted({*args.actor_resources, *args.learner_resources}):
        per_actor, per_learner = args.actor_resources.get(name, 0), args.learner_resources.get(name, 0)
        wanted = placement.actor_count * per_actor + placement.learner_ranks * per_learner
        need(
            wanted <= total[name],
            f"--actor_resources/--learner_resources ask for {wanted:g} {name!r} ({placement.actor_count} actors x "
            f"{per_actor:g} + {placement.learner_ranks} learner ranks x {per_learner:g}) but the Ray cluster has "
            f"{total[name]:g}.",
        )


def local_nodes() -> list[dict[str, float]]:
    """This machine as the one node of the private cluster `start_local_ray` would start."""
    import torch

    return [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}]


def place_on_cluster(args: Args) -> None:
    """Decide the placement from the connected cluster's nodes (not the driver's devices) and hand it to
    `args`, which the roles receive; a ConfigError here comes before any engine starts."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    args.place(plan_placement(nodes, args))
    logger.info("placement on the Ray cluster's %d nodes: %s", len(nodes), args.placement)


@ray.remote(num_cpus=0)
def rendezvous_endpoint() -> tuple[str, str, int, int]:
    """The node this runs on, its address, a port free there and the cores this process may use."""
    node = ray.get_runtime_context().get_node_id()
    return node, ray.util.get_node_ip_address(), free_port(), len(os.sched_getaffinity(0))


def learner_threads(args: Args, placement: Placement, node_cores: int, node_gpus: float) -> int:
    """Torch threads per learner process (--learner_threads, or automatic: see its help).

    Ray sets OMP_NUM_THREADS=1 in actors that ask for no CPU, as learners do: one core of many
    would train. Ranks on one node: all of them on CPU; on GPUs, as many as the node's GPUs hold.
    """
    if args.learner_threads > 0:
        return args.learner_threads
    ranks_on_node = placement.learner_ranks
    if placement.on_cuda:
        ranks_on_node = min(ranks_on_node, max(1, int(node_gpus / placement.gpus_per_learner)))
    share = node_cores // ranks_on_node
    return max(1, share // 2 if args.asynchronous else share)


def spawn_learners(args: PPOArgs, learner_cls, schedule_steps: float) -> list:
    """One Ray actor per learner rank. Rank 0 hosts the rendezvous on a node with room for a learner,
    found by a task asking for the same resources; spawned before the actors, it keeps that room."""
    placement = args.placed()
    resources = {"num_cpus": 0, "num_gpus": placement.gpus_per_learner, "resources": args.learner_resources}
    node, address, port, cores = ray.get(rendezvous_endpoint.options(**resources).remote())
    node_gpus = next(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["NodeID"] == node)
    threads = learner_threads(args, placement, cores, node_gpus)
    master = {"MASTER_ADDR": address, "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)}
    learners = []
    for rank in range(placement.learner_ranks):
        options = {**resources, "runtime_env": {"env_vars": {**worker_env(), **master}}}
        if rank == 0:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        learners.append(
            ray.remote(learner_cls).options(**options).remote(args, rank, placement.learner_ranks, schedule_steps)
        )
    return learners


def spawn_actors(args: PPOArgs, actor_cls) -> list:
    placement = args.placed()
    # A dead actor (OOM, segfault, killed) is restarted by Ray; the loop resends its chunk (oat_cpgd.roles).
    remote_cls = ray.remote(actor_cls).options(
        num_cpus=0,
        num_gpus=placement.gpus_per_actor,
        resources=args.actor_resources,
        max_restarts=args.max_actor_restarts,
        max_task_retries=0,
    )
    return [remote_cls.remote(args, index) for index in range(placement.actor_count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class ActorGroup:
    """A `VLLMWeightSyncClient` over Ray actor handles: every call goes to every actor.

    vLLM's trainer engines address a single engine, whose workers take ranks 1.. of the broadcast
    group; here each actor's workers get the next block of ranks instead.
    """

    def __init__(self, actors: list, workers_per_actor: list[int]) -> None:
        self.actors = actors
        self.rank_offsets = [1 + n for n in itertools.accumulate([0, *workers_per_actor[:-1]])]

    def _all(self, method: str, *args: Any) -> None:
        ray.get([getattr(actor, method).remote(*args) for actor in self.actors])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if "rank_offset" not in init_info:  # IPC has no ranks
            self._all("init_weight_transfer_engine", init_info)
            return
        ray.get(
            [
                actor.init_weight_transfer_engine.remote({**init_info, "rank_offset": offset})
                for actor, offset in zip(self.actors, self.rank_offsets, strict=True)
            ]
        )

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._all("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")
