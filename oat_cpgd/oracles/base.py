"""The reward-oracle interface: subclass `RewardOracle` and implement `reward`.

The base class scores batches in worker processes, each check under a time limit, so
that a pathological response cannot hang or crash the actor that asks for rewards.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as CheckTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from pebble import ProcessFuture, ProcessPool

Info = dict[str, Any]
CORRECT_REWARD = 1.0
"""The score of a correct answer: evaluation counts a reward >= it as correct, and the learner's
train/all_correct_groups too; format rewards (e.g. countdown's 0.1) stay below it."""
_POOL_ATTRIBUTES = ("_pool", "_pool_finalizer", "_pool_lock")


class RewardOracle:
    """Scores responses against references with a rule.

    Subclasses implement only `reward`; `get_reward` adds batching, the time limit
    (`timeout_s` per check) and error containment: a check that times out, raises or
    kills its worker scores `incorrect_reward` and is counted in `last_metrics`.
    Optionally, `check_reference` rejects references that `reward` cannot use (the loader
    drops their rows) and `same_answer` tells equivalent answers apart for maj@n.

    Checks run in `num_workers` processes started with "spawn" (forking a process that
    runs vLLM/torch threads is unsafe), lazily on first use and reused across calls; a
    worker running over its time limit is killed and replaced. `timeout_s=None` or
    `num_workers=0` runs checks inline, without a time limit (for debugging).
    Workers stop on `close()`, at exit, when the oracle is garbage-collected, and when
    their parent process dies. The oracle pickles without its pool.
    """

    def __init__(
        self,
        timeout_s: float | None = 2.0,
        num_workers: int = 2,
        incorrect_reward: float = 0.0,
        format_reward: float = 0.0,
    ) -> None:
        self.timeout_s = timeout_s
        self.num_workers = num_workers
        self.incorrect_reward = incorrect_reward
        self.format_reward = format_reward
        self.last_metrics: dict[str, float] = {}
        self._reset_pool()

    def reward(self, prompt: str, response: str, reference: Any) -> float | tuple[float, Info]:
        """Score one response: a float, or (float, info) with e.g. `answer` and `format_ok`."""
        raise NotImplementedError

    def check_reference(self, reference: Any) -> bool:
        """Whether `reward` can score responses against `reference`; by default every reference can.

        The prompt loader calls it on every row, in the driver (no workers, no time limit), and
        drops the rows it rejects: a reference that can never be matched would score
        `incorrect_reward` every time its prompt is drawn. Keep it cheap; raising counts as False.
        """
        return True

    @staticmethod
    def same_answer(a: str, b: str) -> bool:
        """Whether two extracted answers (the info's `answer`) are the same answer, for maj@n votes.

        By default: equal text after stripping whitespace (static, so that evaluation can compare
        text without an oracle); subclasses override it with an ordinary method. Called in the
        driver, with no worker time limit, only on answers whose `reward` check finished in time.
        """
        return a.strip() == b.strip()

    def score(self, correct: bool, format_ok: bool) -> float:
        """CORRECT_REWARD (1.0) if correct, else `format_reward` if well-formed, else `incorrect_reward`."""
        if correct:
            return CORRECT_REWARD
        return self.format_reward if format_ok else self.incorrect_reward

    def check(self, prompt: str, response: str, reference: Any) -> tuple[float, Info]:
        """`reward` with its info completed, in this process, with no time limit."""
        result = self.reward(prompt, response, reference)
        reward, info = result if isinstance(result, tuple) else (result, {})
        # Oracles that check no format leave format_ok out: nothing was malformed.
        return float(reward), {"answer": None, "format_ok": True, "timed_out": False, "error": None, **info}

    def get_reward(
        self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[Any]
    ) -> tuple[list[float], list[Info]]:
        """Score a batch: one reward and one info dict per response.

        Each info has `answer` (str or None), `format_ok`, `timed_out` and `error` (str or None).
        """
        start = time.perf_counter()
        items = list(zip(prompts, responses, references, strict=True))
        if self.timeout_s is None or self.num_workers == 0:
            results = [self._check_contained(*item) for item in items]
        else:
            pool = self._running_pool()
            futures = [pool.schedule(_check_in_worker, item, timeout=self.timeout_s) for item in items]
            results = [self._result(future) for future in futures]
        rewards = [reward for reward, _ in results]
        infos = [info for _, info in results]
        self.last_metrics = {
            "oracle/verify_time": time.perf_counter() - start,
            "oracle/timeouts": sum(info["timed_out"] for info in infos),
            "oracle/errors": sum(info["error"] is not None for info in infos),
            "oracle/format_ok": sum(bool(info["format_ok"]) for info in infos),
            "oracle/reward_mean": sum(rewards) / max(len(rewards), 1),
        }
        return rewards, infos

    def run_contained(self, function: Callable[..., Any], items: Sequence[tuple]) -> list[Any]:
        """`function(*item)` for each item, in this oracle's workers under its time limit (inline and
        unlimited where checks are): an environment's calls run here (oat_cpgd.environments).

        `function` must be importable by the workers and catch its own errors; one that runs over, or
        kills its worker, gives `Contained(timed_out, error)` instead of its result.
        """
        if self.timeout_s is None or self.num_workers == 0:
            return [function(*item) for item in items]
        pool = self._running_pool()
        futures = [pool.schedule(function, item, timeout=self.timeout_s) for item in items]
        return [self._result(future, failure=Contained.of) for future in futures]

    def close(self) -> None:
        """Stop the worker processes; a later `get_reward` starts new ones."""
        with self._pool_lock:
            self._stop_workers()

    def __enter__(self) -> RewardOracle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # A live pool cannot be pickled; a copy starts its own when first used.
        return {k: v for k, v in self.__dict__.items() if k not in _POOL_ATTRIBUTES}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_pool()

    def _reset_pool(self) -> None:
        self._pool: ProcessPool | None = None
        self._pool_finalizer: weakref.finalize | None = None
        self._pool_lock = threading.Lock()

    def _running_pool(self) -> ProcessPool:
        with self._pool_lock:
            if self._pool is None or not self._pool.active:  # not started yet, or broken
                self._stop_workers()
                # Workers get a snapshot, so that the pool does not keep this oracle alive.
                self._pool = ProcessPool(
                    self.num_workers,
                    initializer=_init_worker,
                    initargs=(pickle.dumps(self),),
                    context=multiprocessing.get_context("spawn"),
                )
                self._pool_finalizer = weakref.finalize(self, _stop, self._pool)
            return self._pool

    def _stop_workers(self) -> None:
        if self._pool_finalizer is not None:
            self._pool_finalizer()  # runs at most once, also at exit or garbage collection
        self._pool = self._pool_finalizer = None

    def _result(self, future: ProcessFuture, failure: Callable[[BaseException | None], Any] | None = None) -> Any:
        """The future's result, or `failure(error)` (default `self._failure`; error None: a timeout)."""
        failure = failure or self._failure
        try:
            return future.result()
        except CheckTimeout:
            return failure(None)
        except BrokenProcessPool as error:  # the workers died before running any check
            raise RuntimeError(
                f"The oracle's workers could not start ({error}): is {type(self).__qualname__} importable"
                ' from a module, and is the main script guarded by `if __name__ == "__main__":`?'
            ) from error
        except Exception as error:  # the worker died, or the item could not be pickled
            return failure(error)

    def _check_contained(self, prompt: str, response: str, reference: Any) -> tuple[float, Info]:
        try:
            return self.check(prompt, response, reference)
        except Exception as error:
            return self._failure(error)

    def _failure(self, error: BaseException | None) -> tuple[float, Info]:
        """The incorrect reward for a check that raised `error`, or timed out if None."""
        message = None if error is None else f"{type(error).__name__}: {error}"
        return self.incorrect_reward, {"answer": None, "format_ok": False, "timed_out": error is None, "error": message}


@dataclass(frozen=True)
class Contained:
    """A call of `run_contained` that ran over its time limit or broke its worker."""

    timed_out: bool
    error: str | None

    @classmethod
    def of(cls, error: BaseException | None) -> Contained:
        return cls(error is None, None if error is None else f"{type(error).__name__}: {error}")


def _stop(pool: ProcessPool) -> None:
    pool.stop()
    pool.join()


_worker_oracle: RewardOracle | None = None


def _init_worker(pickled_oracle: bytes) -> None:
    global _worker_oracle
    _worker_oracle = pickle.loads(pickled_oracle)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # An idle worker exits when its pipe closes, but a hung check would keep it alive.
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _check_in_worker(prompt: str, response: str, reference: Any) -> tuple[float, Info]:
    try:
        return _worker_oracle.check(prompt, response, reference)
    except BaseException as error:  # SystemExit too: pebble would re-raise it in the parent
        return _worker_oracle._failure(error)
