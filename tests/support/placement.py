"""Roles that only report where Ray put them (tests/test_gpu_placement.py): importable by Ray workers."""

import os

import ray

from oat_cpgd.actors.actor import tensor_parallel_workers


def where() -> dict:
    """This process's node, the GPUs Ray gave it, and what CUDA would see."""
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "gpus": sorted(int(gpu) for gpu in ray.get_gpu_ids()),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


@ray.remote
def vllm_worker() -> dict:
    return where()


class ProbeLearner:
    """Takes a learner rank's arguments (oat_cpgd.placement.spawn_learners)."""

    def __init__(self, args, placement, rank: int, schedule_steps) -> None:
        self.master = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]

    def where(self) -> dict:
        return {**where(), "master": self.master}


class ProbeActor:
    """Takes an actor's arguments (oat_cpgd.placement.spawn_actors) and, for a tensor-parallel engine,
    starts its workers the way vLLM's Ray executor does (vllm/v1/executor/ray_executor.py
    `_init_workers_ray`): in the placement group the actor runs in, one per bundle of
    VLLM_RAY_BUNDLE_INDICES, each asking VLLM_RAY_PER_WORKER_GPUS GPUs. The environment and engine
    options come from the actor's own `tensor_parallel_workers`."""

    def __init__(self, args, placement, actor_index: int = 0) -> None:
        self.engine_options = tensor_parallel_workers(placement, actor_index)
        self.workers = []
        if self.engine_options:
            group = ray.util.get_current_placement_group()
            share = float(os.environ["VLLM_RAY_PER_WORKER_GPUS"])
            for bundle in map(int, os.environ["VLLM_RAY_BUNDLE_INDICES"].split(",")):
                strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=True
                )
                self.workers.append(vllm_worker.options(num_cpus=0, num_gpus=share, scheduling_strategy=strategy))

    def where(self) -> dict:
        workers = ray.get([worker.remote() for worker in self.workers])
        return {**where(), "engine_options": self.engine_options, "workers": workers}
