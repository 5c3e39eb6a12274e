"""Checkpoint folders: written aside and renamed into place, so a crash mid-save loses nothing.

<run_dir>/checkpoints/step_<N>/
    policy/            the policy in Hugging Face format (transformers and vLLM load it)
    policy_adapter/    (--lora_rank) the LoRA adapter in peft's format; policy/ is then the merged model
    deepspeed/         optimizer, scheduler and ZeRO partitions of the policy (and critic)
    pending_rollout.pkl  (--asynchronous) the next step's rollout, sampled before this step's update
    state.json         step counters and the data position, and the size and sha256 of every other
                       file (its manifest), written last

A checkpoint whose files no longer match its manifest (one missing, cut short by a crash of the
file system, or its bytes changed) is skipped, with a warning: the previous one is used. A save
that fails (a full disk, a learner's error) removes only its own staging folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STATE_FILE = "state.json"
PENDING_ROLLOUT_FILE = "pending_rollout.pkl"
MANIFEST_KEY = "files"
"""The key of state.json that holds the manifest: {relative path: [size, sha256]} of every other file.
Checkpoints saved before it existed lack it, and are taken as they are."""
TEMP_PREFIX = ".tmp-"
"""Folders being written or removed: never a checkpoint, and what a crash leaves of them goes at the next save."""

logger = logging.getLogger(__name__)


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed; its staging folder is removed and the earlier checkpoints are as they were.
    `previous` is the newest of them that checks out (None when there is none); the cause is chained."""

    def __init__(self, step: int, cause: Exception, previous: Path | None):
        self.step, self.previous = step, previous
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        super().__init__(f"saving the step-{step} checkpoint failed ({type(cause).__name__}: {cause}); {kept}")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(checkpoint: Path) -> int:
    return int(re.sub(r"\D", "", checkpoint.name))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a half-written one has no state.json under its final name)."""
    found = [p for p in checkpoints_dir(run_dir).glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=step_of)


def file_hash(path: Path) -> str:
    # sha256: in the standard library, and at 1.5 GB/s on one core where the CPU has SHA instructions.
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def file_hashes(paths: list[Path]) -> list[str]:
    # hashlib lets go of the GIL: the files (one optimizer partition per rank) hash in parallel.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(file_hash, paths))


def manifest(folder: Path) -> dict[str, list]:
    """{relative path: [size, sha256]} of every file in `folder` but state.json (which holds it)."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file() and path != folder / STATE_FILE)
    return {
        path.relative_to(folder).as_posix(): [path.stat().st_size, digest]
        for path, digest in zip(paths, file_hashes(paths), strict=True)
    }


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a complete checkpoint's files (the first file found unlike its manifest),
    or None when they are as saved."""
    try:
        listed = json.loads((checkpoint / STATE_FILE).read_text()).get(MANIFEST_KEY, {})
    except (OSError, ValueError) as error:  # cut short or garbled: not JSON, or not UTF-8
        return f"{STATE_FILE} is unreadable ({error})"
    # Sizes first: a missing or truncated file is found without hashing the others.
    for name, (size, _) in listed.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when saved"
    try:
        found = file_hashes([checkpoint / name for name in listed])
    except OSError as error:  # a bad sector, say: the file cannot be trusted either
        return f"{error.filename} cannot be read ({error.strerror})"
    for (name, (_, digest)), actual in zip(listed.items(), found, strict=True):
        if actual != digest:
            return f"{name} has changed since it was saved (its sha256 differs)"
    return None


def latest_checkpoint(run_dir: Path, at_most: int | None = None) -> Path | None:
    """The newest checkpoint that can be trusted: complete, and its files as saved (of a step <= `at_most`,
    if given). A newer one that is damaged is skipped with a warning naming the file. What resume, a role's
    restart and a rollback start from."""
    found = complete_checkpoints(run_dir)
    for checkpoint in reversed([c for c in found if at_most is None or step_of(c) <= at_most]):
        problem = damage(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("checkpoint %s is damaged, so an earlier one is used: %s", checkpoint, problem)
    return None


def remove(checkpoint: Path) -> None:
    # Renamed first, so that a crash mid-removal leaves no half-deleted folder that looks complete.
    doomed = checkpoint.with_name(f"{TEMP_PREFIX}removed-{checkpoint.name}")
    checkpoint.rename(doomed)
    shutil.rmtree(doomed)


def save_checkpoint(
    run_dir: Path, step: int, state: dict, write_contents: Callable[[Path], None], max_keep: int
) -> Path:
    """Write a checkpoint for `step` with `write_contents(folder)`, then its state and manifest; keep the
    newest `max_keep` (all with 0).

    Any error while writing (a full disk, a learner raising) removes the staging folder, leaves every
    earlier checkpoint as it was, and raises CheckpointSaveError.
    """
    folder = checkpoints_dir(run_dir)
    final = folder / f"step_{step}"
    staging = folder / f"{TEMP_PREFIX}{final.name}"
    for debris in folder.glob(f"{TEMP_PREFIX}*"):  # left by an earlier crash
        shutil.rmtree(debris)
    try:
        staging.mkdir(parents=True)
        write_contents(staging)
        (staging / STATE_FILE).write_text(json.dumps({**state, MANIFEST_KEY: manifest(staging)}, indent=2))
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)  # also frees what a full disk needs
        raise CheckpointSaveError(step, error, latest_checkpoint(run_dir)) from error
    if final.exists():  # saved before by a run that went further, then resumed from an earlier checkpoint
        remove(final)
    staging.rename(final)  # atomic on one file system: the checkpoint appears whole or not at all
    done = complete_checkpoints(run_dir)
    # Newer steps come from before a resume went back past them (they were damaged): never the newest again.
    stale = [c for c in done if step_of(c) > step]
    # This one, just written and hashed, stays, and the newest max_keep - 1 before it.
    older = [c for c in done if step_of(c) < step]
    surplus = max(len(older) - (max_keep - 1), 0) if max_keep > 0 else 0
    for old in stale + older[:surplus]:
        remove(old)
    return final


def load_state(checkpoint: Path) -> dict:
    """The `state` saved with the checkpoint (without its manifest)."""
    state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    state.pop(MANIFEST_KEY, None)
    return state


def save_pending_rollout(folder: Path, rollout: dict) -> None:
    (Path(folder) / PENDING_ROLLOUT_FILE).write_bytes(pickle.dumps(rollout))


def load_pending_rollout(checkpoint: Path) -> dict | None:
    """The rollout saved with `checkpoint` for the step after it, if any (a file this run wrote itself)."""
    path = Path(checkpoint) / PENDING_ROLLOUT_FILE
    return pickle.loads(path.read_bytes()) if path.exists() else None


RESUMABLE_CHANGES = frozenset(
    {
        # Where and how the run is watched, and how long it goes on: not what it learns.
        "resume_dir", "ray_address", "save_path", "wb_run_name", "use_wb", "wb_org", "wb_group", "wb_project",
        "use_tb", "plot", "verbose", "dry_run", "log_samples", "max_steps", "save_steps", "max_save_num", "eval_steps",
        # Where and how the roles run: seeded samples do not depend on which actor draws them.
        "num_actors", "vllm_gpu_ratio", "vllm_cpu_kvcache_gb", "enable_prefix_caching", "oracle_workers",
        "actor_resources", "learner_resources", "max_actor_restarts", "max_learner_restarts", "role_timeout",
    }
)  # fmt: skip
"""Flags a resumed run may change; every other flag (model, data, algorithm, learning) must match."""


def prompts_fingerprint(indices: list[int], prompts: list[str]) -> str:
    """A hash of the training prompts (their rows and rendered text): the same data, in the same order."""
    return hashlib.sha256(json.dumps([indices, prompts]).encode()).hexdigest()[:16]


def resume_differences(
    saved_config: dict, config: dict, saved_state: dict, num_prompts: int, fingerprint: str, defaults: dict
) -> list[str]:
    """What keeps a run from continuing the one saved: flags that differ (beyond RESUMABLE_CHANGES), or other data.

    A flag the saved run did not have (it was saved by an older version) counts as its default there,
    so upgrading oat_cpgd does not strand a run that the new flags, left at their defaults, continue;
    a flag the saved run had that no longer exists (oracle_type, say) does not count.
    """
    saved_config = {**{name: value for name, value in defaults.items() if name not in saved_config}, **saved_config}
    differences = [
        f"--{name}: {saved_config.get(name)!r} in the saved run, {config.get(name)!r} now"
        for name in sorted(config)
        if name not in RESUMABLE_CHANGES and saved_config.get(name) != config.get(name)
    ]
    if saved_state.get("num_prompts") != num_prompts:
        differences.append(f"training prompts: {saved_state.get('num_prompts')} in the saved run, {num_prompts} now")
    elif saved_state.get("prompts_fingerprint", fingerprint) != fingerprint:
        differences.append("training prompts: as many as in the saved run, but other rows or text (their hash differs)")
    return differences
