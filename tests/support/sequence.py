"""The real actor and learner, each call they receive recorded with its wall time (tests/test_loop.py checks
the order of the collocated sequence and of the asynchronous sync). Importable by Ray workers."""

import json
import os
import time
from pathlib import Path

from oat_cpgd.learners import Learner
from support.loop import GreedyRecordingActor

CALLS = "calls.jsonl"


def record(args, role: str, call: str, *details, **fields) -> None:
    """One line per event, appended by every process to the run folder's calls.jsonl (lines this short are
    written whole by one append)."""
    event = {"t": time.time_ns(), "pid": os.getpid(), "role": role, "call": call, "details": list(details), **fields}
    line = json.dumps(event)
    with open(Path(args.save_path) / args.wb_run_name / CALLS, "a") as out:
        out.write(line + "\n")


def recorded(cls, role: str, methods: tuple[str, ...]):
    """`cls` with `methods` recording their start and end."""

    def wrap(name):
        method = getattr(cls, name)

        def recording(self, *args, **kwargs):
            tags = [args[0]] if name == "wake_up" and args else []
            record(self.args, role, f"{name}:start", *tags)
            result = method(self, *args, **kwargs)
            record(self.args, role, f"{name}:end", *tags)
            return result

        return recording

    return type(f"Recording{cls.__name__}", (cls,), {name: wrap(name) for name in methods})


ACTOR_CALLS = ("sleep", "wake_up", "start_weight_update", "update_weights", "finish_weight_update", "step",
               "probe_logprobs", "evaluate")  # fmt: skip


class RecordingActor(recorded(GreedyRecordingActor, "actor", ACTOR_CALLS)):
    def __init__(self, args, placement, actor_index: int = 0) -> None:
        self.args = args
        record(args, "actor", "__init__:start")
        super().__init__(args, placement, actor_index)
        record(args, "actor", "__init__:end")


class RecordingLearner(recorded(Learner, "learner", ("learn", "release_memory", "sync_weights"))):
    def __init__(self, args, placement, rank: int, schedule_steps) -> None:
        record(args, "learner", "__init__:start", rank=rank)  # which process is rank 0, which drives the sync
        super().__init__(args, placement, rank, schedule_steps)
        record(args, "learner", "__init__:end")


def calls(run_dir: Path) -> list[dict]:
    """The recorded events, in time order."""
    return sorted((json.loads(line) for line in (run_dir / CALLS).read_text().splitlines()), key=lambda e: e["t"])


class SlowActor(GreedyRecordingActor):
    """Its rollouts take a second longer than the tiny model needs: longer than a learning step."""

    def step(self, *args, **kwargs):
        result = super().step(*args, **kwargs)
        time.sleep(1.0)
        return result


SlowRecordingActor = recorded(SlowActor, "actor", ACTOR_CALLS)
