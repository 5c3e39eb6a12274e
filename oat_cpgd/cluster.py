"""The Ray cluster a run uses: a private one on this machine, or one it attaches to (--ray_address);
the environment its workers get; the run's placement (oat_cpgd.placement) booked there as one
placement group, and the roles started in it."""

from __future__ import annotations

import contextlib
import ctypes.util
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from oat_cpgd.args import Args
from oat_cpgd.console import register_role, role_env
from oat_cpgd.placement import Placement, by_node, describe, learner_threads, total_resources

if TYPE_CHECKING:
    from oat_cpgd.learners.schedule import ScheduleSteps

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
        logger.warning("RAY_TMPDIR %s is too long for Ray's socket paths; using %s", base, tempfile.gettempdir())
        base = tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="ray-", dir=base)


def start_local_ray(log_to_driver: bool = True, **resources) -> str:
    """Start a private single-machine cluster, all its traffic on loopback; returns its temp dir.

    `log_to_driver`: Ray prints its workers' stdout and stderr on this process's console.
    `resources`: what ray.init takes to override the machine's (tests give a CPU machine `num_gpus=8`).
    """
    temp_dir = ray_temp_dir()
    ray.init(
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": worker_env()},
        log_to_driver=log_to_driver,
        **resources,
    )
    return temp_dir


@contextlib.contextmanager
def ray_session(ray_address: str | None, log_to_driver: bool = True) -> Iterator[None]:
    """Attach to `ray_address`, reuse a running session, or start a local cluster and tear it down.

    `log_to_driver`: Ray prints its workers' output on this console (a run without --verbose sends its
    roles' output to their log files instead, oat_cpgd.console, and asks for none)."""
    if ray.is_initialized():
        yield
        return
    temp_dir = None
    if ray_address:
        ray.init(address=ray_address, runtime_env={"env_vars": worker_env()}, log_to_driver=log_to_driver)
    else:
        temp_dir = start_local_ray(log_to_driver)
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


RESERVE_TIMEOUT_S = 600.0
"""How long the placement group may wait for the cluster to free its bundles."""


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of the connected cluster's live nodes (not the driver's devices)."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


# ---------------------------------------------------------------------------- the placement group
@dataclass(frozen=True)
class Reservation:
    """A placement booked on the cluster: its placement group, and each bundle's node and GPUs."""

    group: PlacementGroup
    placement: Placement
    """With the bundle numbers of `group` (see `reserve`)."""
    node_ids: tuple[str, ...]
    """Each bundle's Ray node."""
    addresses: tuple[str, ...]
    """Each bundle's node address (nodes on one host may share one)."""
    gpu_ids: tuple[tuple[int, ...], ...]
    """Each bundle's GPUs, as Ray numbers them on its node (empty on CPU)."""

    def strategy(self, bundle: int, capture_child_tasks: bool = False) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=capture_child_tasks
        )

    def lines(self) -> list[str]:
        """One line per role: `placement: learner 3 -> node 10.0.0.2, GPUs [3]`."""
        return describe(self.placement, self.addresses, self.gpu_ids)

    def release(self) -> None:
        remove_placement_group(self.group)


@ray.remote(num_cpus=0)
def bundle_location() -> tuple[str, tuple[int, ...]]:
    """The node and the GPU ids of the bundle this task runs in."""
    return ray.get_runtime_context().get_node_id(), tuple(int(gpu) for gpu in ray.get_gpu_ids())


def reserve(placement: Placement, timeout_s: float = RESERVE_TIMEOUT_S) -> Reservation:
    """Book the placement's bundles as one placement group, and number them by node.

    Ray may spread a group's bundles over nodes in any order. Bundles alike are renumbered by
    node address and GPU, so an actor's consecutive bundles (its tensor-parallel GPUs) share a node
    wherever a node has room for them, as OpenRLHF's get_bundle_indices does
    (openrlhf/trainer/ray/utils.py); then each actor's GPUs are checked to be on one node.
    """
    group = placement_group([dict(bundle) for bundle in placement.bundles], strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise RuntimeError(
            f"the Ray cluster did not free {len(placement.bundles)} bundles of {dict(total_resources(placement.bundles))} "
            f"for this run within {timeout_s:g} s: other jobs hold them (`ray status` shows what is in use)."
        )
    # A sliver of the bundle's GPU, so that ray.get_gpu_ids() names it.
    probe = {"num_gpus": 0.01} if placement.on_cuda else {}
    found = ray.get(
        [
            bundle_location.options(**probe, scheduling_strategy=PlacementGroupSchedulingStrategy(group, b)).remote()
            for b in range(len(placement.bundles))
        ]
    )
    # The address Ray knows each node by (the one vLLM's Ray executor uses too).
    address_of = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    locations = [(node, address_of[node], gpus) for node, gpus in found]
    order = by_node(placement.bundles, locations)
    renumbered = replace(
        placement,
        learner_bundles=tuple(order[b] for b in placement.learner_bundles),
        actor_bundles=tuple(tuple(order[b] for b in bundles) for bundles in placement.actor_bundles),
    )
    node_ids, addresses, gpu_ids = (tuple(column) for column in zip(*locations, strict=True))
    reservation = Reservation(group, renumbered, node_ids, addresses, gpu_ids)
    for j, bundles in enumerate(renumbered.actor_bundles):
        if len({node_ids[b] for b in bundles}) > 1:
            reservation.release()
            nodes = sorted({f"{addresses[b]} ({node_ids[b][:8]})" for b in bundles})
            raise RuntimeError(
                f"actor {j}'s {len(bundles)} GPUs (--vllm_tensor_parallel_size) landed on nodes {nodes}: "
                "give each node a multiple of that many free GPUs."
            )
    return reservation


# ---------------------------------------------------------------------------- the roles
@ray.remote(num_cpus=0)
def rendezvous_endpoint() -> tuple[str, int, int]:
    """The address of the node this runs on, a port free there and the cores this process may use."""
    return ray.util.get_node_ip_address(), free_port(), len(os.sched_getaffinity(0))


def spawn_learners(args: Args, reservation: Reservation, learner_cls, schedule_steps: ScheduleSteps) -> list:
    """One Ray actor per learner rank, each in its bundle; rank 0 hosts the rendezvous."""
    placement = reservation.placement
    first = placement.learner_bundles[0]
    address, port, cores = ray.get(
        rendezvous_endpoint.options(scheduling_strategy=reservation.strategy(first)).remote()
    )
    ranks_on_node = sum(reservation.node_ids[b] == reservation.node_ids[first] for b in placement.learner_bundles)
    threads = learner_threads(args, ranks_on_node, cores)
    env = {**worker_env(), "MASTER_ADDR": address, "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)}
    remote_cls = ray.remote(learner_cls)
    learners = []
    for rank, bundle in enumerate(placement.learner_bundles):
        log = role_env(args, f"learner{rank}")  # its output's file (oat_cpgd.console)
        learners.append(
            remote_cls.options(
                num_cpus=0,
                num_gpus=placement.gpu_share,
                scheduling_strategy=reservation.strategy(bundle),
                runtime_env={"env_vars": {**env, **log}},
            ).remote(args, placement, rank, schedule_steps)
        )
        register_role(learners[-1], f"learner{rank}", log)
    return learners


ONEDNN_KERNEL_CACHE = "16"
"""Kernels oneDNN keeps in a CPU actor (its default: 1024)."""


def system_tcmalloc() -> str | None:
    """The name the dynamic loader knows the system's tcmalloc by (the minimal build first), or None."""
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def cpu_actor_env() -> dict[str, str]:
    """A CPU actor's kernel cache and allocator, set as its process starts.

    vLLM's CPU matmul (`ops.onednn_mm`) builds a oneDNN kernel for every new batch token count: kept in
    oneDNN's cache and freed into glibc's heap, they grew a 300-step soak's actor by 25%. A small cache
    and tcmalloc (preloaded where the system has it, as vLLM's CPU guide advises) keep it flat; neither
    alone does (vLLM alone, 300 rounds of random-length prompts: +450 MiB with neither, +184 with the
    cache only, +162 with tcmalloc only, none with both; docs/RESULTS.md).
    """
    env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_KERNEL_CACHE)}
    preloaded = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preloaded:
        env["LD_PRELOAD"] = preloaded
    elif tcmalloc := system_tcmalloc():
        env["LD_PRELOAD"] = ":".join(filter(None, [tcmalloc, preloaded]))
    else:
        logger.warning(
            "tcmalloc is not installed (Debian/Ubuntu: apt install libtcmalloc-minimal4): "
            "the vLLM actor's memory will grow about 0.7 MB a step on CPU"
        )
    return env


def spawn_actors(args: Args, reservation: Reservation, actor_cls) -> list:
    """One Ray actor per vLLM engine, in its first bundle; a tensor-parallel engine's workers, which
    vLLM's Ray executor starts as child tasks, join it in the actor's other bundles."""
    placement = reservation.placement
    # A dead actor (OOM, segfault, killed) is restarted by Ray in its bundle; the loop resends its chunk.
    remote_cls = ray.remote(actor_cls)
    cpu_env = {} if placement.on_cuda else cpu_actor_env()
    actors = []
    for index, bundles in enumerate(placement.actor_bundles):
        # Its output's file (oat_cpgd.console), added to the job's environment (Ray merges env_vars).
        log = role_env(args, f"actor{index}")
        env = {**log, **cpu_env}
        actors.append(
            remote_cls.options(
                num_cpus=0,
                num_gpus=placement.actor_process_gpus,
                scheduling_strategy=reservation.strategy(bundles[0], capture_child_tasks=True),
                max_restarts=args.max_actor_restarts,
                max_task_retries=0,
                **({"runtime_env": {"env_vars": env}} if env else {}),
            ).remote(args, placement, index)
        )
        register_role(actors[-1], f"actor{index}", log)
    return actors
