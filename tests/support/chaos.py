"""Roles that kill their own process at a planned moment, for tests/test_chaos.py (importable by Ray
workers via PYTHONPATH).

The plan is `chaos.json` in the run folder, written by the test before the run: one or more faults, each
which role dies, in which of its calls, before or after doing its work. A marker file per fault makes
each happen once per run (a restarted process reads the same plan and counts its calls afresh).
"""

import errno
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

from oat_cpgd.learners import Learner
from support.faults import first_time
from support.loop import GreedyRecordingActor

PLAN_FILE = "chaos.json"


def write_plan(run_dir: Path, *faults: dict) -> None:
    """Each fault's `role` ("actor0", "learner1"; "learners": every rank) dies in its `call`-th `method` call
    (1-based), `when` "before" or "after" its work; or, `when` "stall", hangs there instead (a collective
    that never returns); or, `when` "disk_full", raises ENOSPC there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PLAN_FILE).write_text(json.dumps(list(faults)))


def struck(run_dir: Path, index: int = 0) -> bool:
    """Whether the plan's `index`-th fault happened (on one rank at least, for "learners")."""
    return any(run_dir.glob(f"chaos_{index}_*"))


class _Chaos:
    """Counts this process's calls and dies where the plan says."""

    def _chaos(self, role: str, method: str, when: str) -> None:
        run_dir = Path(self.args.save_path) / self.args.wb_run_name
        plan_file = run_dir / PLAN_FILE
        if not plan_file.exists():
            return
        self.chaos_calls = getattr(self, "chaos_calls", Counter())
        self.chaos_calls[method, when] += 1
        for index, fault in enumerate(json.loads(plan_file.read_text())):
            planned = "before" if fault["when"] in ("stall", "disk_full") else fault["when"]
            if fault["role"] not in (role, role.rstrip("0123456789") + "s") or (fault["method"], planned) != (
                method,
                when,
            ):
                continue
            # Once per run, on each rank it names.
            if self.chaos_calls[method, when] == fault["call"] and first_time(self.args, f"chaos_{index}_{role}"):
                if fault["when"] == "stall":
                    time.sleep(24 * 3600)
                if fault["when"] == "disk_full":
                    raise OSError(errno.ENOSPC, "No space left on device (chaos)")
                os.kill(os.getpid(), signal.SIGKILL)

    def _around(self, method: str, work, *args, **kwargs):
        self._chaos(self.role_name, method, "before")
        result = work(*args, **kwargs)
        self._chaos(self.role_name, method, "after")
        return result


class ChaosActor(_Chaos, GreedyRecordingActor):
    @property
    def role_name(self) -> str:
        return f"actor{self.actor_index}"

    def step(self, *args, **kwargs):
        return self._around("step", super().step, *args, **kwargs)

    def update_weights(self, *args, **kwargs):
        return self._around("update_weights", super().update_weights, *args, **kwargs)

    def probe_logprobs(self, *args, **kwargs):
        return self._around("probe_logprobs", super().probe_logprobs, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        return self._around("evaluate", super().evaluate, *args, **kwargs)


class ChaosLearner(_Chaos, Learner):
    @property
    def role_name(self) -> str:
        return f"learner{self.rank}"

    def learn(self, *args, **kwargs):
        return self._around("learn", super().learn, *args, **kwargs)

    def sync_weights(self, *args, **kwargs):
        return self._around("sync_weights", super().sync_weights, *args, **kwargs)

    def probe_logprobs(self, *args, **kwargs):
        return self._around("probe_logprobs", super().probe_logprobs, *args, **kwargs)

    def save_checkpoint(self, *args, **kwargs):
        return self._around("save_checkpoint", super().save_checkpoint, *args, **kwargs)
