"""Real roles that fail on purpose, for tests/test_faults.py and tests/test_engine_process.py (importable by Ray
workers via PYTHONPATH)."""

import inspect
import json
import os
import signal
from pathlib import Path

from oat_cpgd.actors import Actor
from support.loop import GreedyRecordingActor


def first_time(args, name: str) -> bool:
    """True once per run folder: a marker file survives the process that dies."""
    marker = Path(args.save_path) / args.wb_run_name / name
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return True


class KilledOnceActor(GreedyRecordingActor):
    """The real actor; its process is SIGKILLed in the middle of its second rollout chunk, once a run
    (after generating and scoring, before the result is returned). Ray restarts it."""

    def step(self, *args, **kwargs):
        result = super().step(*args, **kwargs)
        self.chunks = getattr(self, "chunks", 0) + 1
        if self.chunks == 2 and first_time(self.args, "actor_killed"):
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def worker_process(worker) -> dict:
    """Run by the vLLM worker (through collective_rpc): its process, its parent (on CPU with the engine
    core in its own process: the engine core, which runs the worker in a process of its own), the
    file of its weight-transfer engine's class, and its allocator and oneDNN kernel cache."""
    with open("/proc/self/maps") as maps:
        tcmalloc = "libtcmalloc" in maps.read()
    return {
        "worker_pid": os.getpid(),
        "worker_parent_pid": os.getppid(),
        "weight_transfer_file": inspect.getfile(type(worker.weight_transfer_engine)),
        "tcmalloc": tcmalloc,
        "onednn_kernel_cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
    }


class EngineProcessActor(KilledOnceActor):
    """KilledOnceActor that records, at each start, its process, its engine-core client's type and its
    vLLM worker's processes (engine_processes.jsonl in the run folder)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        (worker,) = self.llm.collective_rpc(worker_process)
        record = {"actor_pid": os.getpid(), "client": type(self.llm.llm_engine.engine_core).__name__, **worker}
        run_dir = Path(self.args.save_path) / self.args.wb_run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "engine_processes.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")


class StaleActor(Actor):
    """Takes part in every weight sync, then reloads the initial weights: the trained policy never
    reaches sampling, as when a sync silently drops weights (verl #7495's LoRA weights)."""

    def finish_weight_update(self, weight_version=None):
        super().finish_weight_update(weight_version)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self.args.pretrain})
        self.llm.reset_prefix_cache()
