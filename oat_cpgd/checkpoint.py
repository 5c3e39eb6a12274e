"""Checkpoint folders: written aside and renamed into place, so a crash mid-save loses nothing.

<run_dir>/checkpoints/step_<N>/
    policy/            the policy in Hugging Face format (transformers and vLLM load it)
    policy_adapter/    (--lora_rank) the LoRA adapter in peft's format; policy/ is then the merged model
    deepspeed/         optimizer, scheduler and ZeRO partitions of the policy (and critic)
    pending_rollout.pkl  (--asynchronous) the next step's rollout, sampled before this step's update
    state.json         step counters and the data position, written last
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

STATE_FILE = "state.json"
PENDING_ROLLOUT_FILE = "pending_rollout.pkl"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a half-written one has no state.json under its final name)."""
    found = [p for p in checkpoints_dir(run_dir).glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def save_checkpoint(
    run_dir: Path, step: int, state: dict, write_contents: Callable[[Path], None], max_keep: int
) -> Path:
    """Write a checkpoint for `step` with `write_contents(folder)`, then its state; keep the newest `max_keep`."""
    final = checkpoints_dir(run_dir) / f"step_{step}"
    staging = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier crash
    staging.mkdir(parents=True)
    write_contents(staging)
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)  # atomic on one file system: the checkpoint appears whole or not at all
    for old in complete_checkpoints(run_dir)[:-max_keep] if max_keep > 0 else []:
        shutil.rmtree(old)
    return final


def load_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


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
        "actor_resources", "learner_resources",
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
