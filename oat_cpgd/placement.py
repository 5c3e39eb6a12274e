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
from collections.abc import Iterator
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from oat_cpgd.args import PPOArgs

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


def spawn_learners(args: PPOArgs, learner_cls, schedule_steps: float) -> list:
    """One Ray actor per learner rank; rank 0 on the driver's node hosts the rendezvous."""
    driver_node = ray.get_runtime_context().get_node_id()
    driver_ip = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == driver_node)
    master = {"MASTER_ADDR": driver_ip, "MASTER_PORT": str(free_port())}
    gpus_each = 0.5 if args.collocate else 1
    learners = []
    for rank in range(args.learner_ranks):
        options = {
            "num_cpus": 0,
            "num_gpus": gpus_each if args.on_cuda else 0,
            "runtime_env": {"env_vars": {**worker_env(), **master}},
        }
        if rank == 0:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(driver_node, soft=False)
        learners.append(
            ray.remote(learner_cls).options(**options).remote(args, rank, args.learner_ranks, schedule_steps)
        )
    return learners


def spawn_actors(args: PPOArgs, actor_cls) -> list:
    gpus_each = 0.5 if args.collocate else args.vllm_tensor_parallel_size
    # A dead actor (OOM, segfault, killed) is restarted by Ray; the loop resends its chunk (oat_cpgd.roles).
    remote_cls = ray.remote(actor_cls).options(
        num_cpus=0,
        num_gpus=gpus_each if args.on_cuda else 0,
        max_restarts=args.max_actor_restarts,
        max_task_retries=0,
    )
    return [remote_cls.remote(args, index) for index in range(args.actor_count)]


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
