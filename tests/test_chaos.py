"""Self-healing, with the real engines: a role's process killed at a moment drawn from the whole step
(rollout, learn, sync, probe, eval, checkpoint). The run finishes by itself, logs every step once,
counts the restart, and ends with the weights of the same run undisturbed."""

import json
import os
import random

import pytest
import safetensors.torch
import torch
from support.chaos import ChaosActor, ChaosLearner, struck, write_plan
from test_faults import MOVING, rows  # tests/ is on sys.path
from test_loop import countdown_args

from oat_cpgd.interface import run
from oat_cpgd.roles import RoleFailed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a run, plus the straight run for the first test

FLAGS = dict(
    MOVING,
    max_steps=4,
    save_steps=2,
    eval_steps=2,
    eval_split="train[64:68]",
    eval_n=1,
    eval_temperature=0.0,
    eval_generate_max_length=8,
    eval_batch_size=4,
)
"""4 steps, a checkpoint after steps 2 and 4, an evaluation before step 1 and after steps 2 and 4,
a sync and its check after every step; 1 actor, 2 learner ranks."""
CALLS = {
    ("actor0", "step"): 4,
    ("actor0", "update_weights"): 4,
    ("actor0", "probe_logprobs"): 4,
    ("actor0", "evaluate"): 3,
    **{(f"learner{rank}", "learn"): 4 for rank in (0, 1)},
    **{(f"learner{rank}", "sync_weights"): 4 for rank in (0, 1)},
    **{(f"learner{rank}", "probe_logprobs"): 4 for rank in (0, 1)},
    **{(f"learner{rank}", "save_checkpoint"): 2 for rank in (0, 1)},
}
"""Each role's calls of each method in an undisturbed run with FLAGS: the moments a draw picks from."""


def draw(seed: int) -> dict:
    """A role, one of its calls and whether it dies before or after the call's work: seeded."""
    rng = random.Random(seed)
    role, method = rng.choice(sorted(CALLS))
    return {
        "role": role,
        "method": method,
        "call": rng.randint(1, CALLS[role, method]),
        "when": rng.choice(["before", "after"]),
    }


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(run_dir / "final_model" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(ray_cluster, tiny_model_path, shared_data, tmp_path_factory):
    """The run undisturbed: its metrics rows and final weights."""
    tmp_path = tmp_path_factory.mktemp("straight")
    run_dir = run(countdown_args(tiny_model_path, shared_data, tmp_path, "cpgd", **FLAGS))
    return rows(run_dir), final_weights(run_dir)


def run_with_plan(faults: list[dict], tiny_model_path, shared_data, tmp_path, **flags):
    args = countdown_args(tiny_model_path, shared_data, tmp_path, "cpgd", **{**FLAGS, **flags})
    run_dir = tmp_path / args.wb_run_name
    write_plan(run_dir, *faults)
    run(args, learner_cls=ChaosLearner, actor_cls=ChaosActor)
    return run_dir


def check_healed(run_dir, faults: list[dict], straight) -> list[dict]:
    """Every fault struck, the run finished, logged each step once, counted one restart of the right role
    per fault, and ends where the undisturbed run ends."""
    straight_rows, straight_weights = straight
    assert all(struck(run_dir, index) for index in range(len(faults))), faults
    logged = rows(run_dir)
    assert [r["step"] for r in logged] == [0, 1, 2, 3, 4], faults  # the evaluation before step 1, then each step
    actor_restarts = sum(r.get("misc/actor_restarts", 0) for r in logged)
    learner_restarts = sum(r.get("misc/learner_restarts", 0) for r in logged)
    restarting = [fault["role"] for fault in faults if fault["when"] != "disk_full"]
    expected = (
        sum(role.startswith("actor") for role in restarting),
        sum(role.startswith("learner") for role in restarting),
    )
    assert (actor_restarts, learner_restarts) == expected, faults
    # Seeded sampling and an exact resume: the same responses, rewards and updates as undisturbed.
    assert [r["train/reward_mean"] for r in logged[1:]] == [r["train/reward_mean"] for r in straight_rows[1:]], faults
    weights = final_weights(run_dir)
    assert weights.keys() == straight_weights.keys()
    for name, tensor in straight_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6, msg=f"{faults}: {name} differs")
    return logged


def test_an_actor_killed_in_the_sync_and_a_learner_rank_killed_mid_run_both_heal(
    straight, tiny_model_path, shared_data, tmp_path
):
    """The actor dies as step 2's weights arrive (the case that used to end the run, blaming the learner):
    it is restarted and the sync redone. Rank 1 then dies in step 4's learn: the ranks start again from
    step 2's checkpoint, and step 3, logged already, is replayed and logged once."""
    faults = [
        {"role": "actor0", "method": "update_weights", "call": 2, "when": "before"},
        {"role": "learner1", "method": "learn", "call": 4, "when": "before"},
    ]
    logged = check_healed(run_with_plan(faults, tiny_model_path, shared_data, tmp_path), faults, straight)
    assert [r.get("misc/steps_replayed", 0) for r in logged[1:]] == [0, 0, 1, 0]


def test_a_checkpoint_that_cannot_be_saved_then_a_stalled_rank_restart_from_the_start(
    straight, tiny_model_path, shared_data, tmp_path
):
    """The disk is full at step 2's save, on every rank: that checkpoint is dropped with a warning and
    training goes on. (One rank failing alone leaves the others in the save's collective: the group is then
    restarted, as when a rank dies.) Rank 0 then never returns from step 3's sync (as in NCCL with a dead
    peer, which has no timeout): after --role_timeout the group is counted as lost and, with no checkpoint
    to trust, restarted from step 0; it saves step 2's checkpoint on the way."""
    faults = [
        {"role": "learners", "method": "save_checkpoint", "call": 1, "when": "disk_full"},
        {"role": "learner0", "method": "sync_weights", "call": 3, "when": "stall"},
    ]
    run_dir = run_with_plan(faults, tiny_model_path, shared_data, tmp_path, role_timeout=30)
    logged = check_healed(run_dir, faults, straight)
    assert [r.get("misc/steps_replayed", 0) for r in logged[1:]] == [2, 0, 0, 0]  # steps 1 and 2, logged again
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_4"]
    driver_log = (run_dir / "logs" / "driver.log").read_text()
    assert "saving the step-2 checkpoint failed" in driver_log and "No space left on device" in driver_log
    assert "the run goes on" in driver_log
    assert "learner rank 0 did not finish sync_weights within --role_timeout 30 s" in driver_log


DRAWS = [draw(seed) for seed in range(int(os.environ.get("CHAOS_DRAWS", 3)))]
"""3 in `make test`; benchmark/chaos.py sets CHAOS_DRAWS for more."""


@pytest.mark.parametrize("plan", DRAWS, ids=[f"{p['role']}-{p['method']}-{p['call']}-{p['when']}" for p in DRAWS])
def test_chaos_draw(plan, straight, tiny_model_path, shared_data, tmp_path):
    """More draws: benchmark/chaos.py."""
    check_healed(run_with_plan([plan], tiny_model_path, shared_data, tmp_path), [plan], straight)


def test_spent_learner_restarts_stop_the_run_naming_the_rank_and_how_to_resume(
    ray_cluster, tiny_model_path, shared_data, tmp_path
):
    plan = {"role": "learner1", "method": "learn", "call": 3, "when": "before"}
    with pytest.raises(RoleFailed) as failed:
        run_with_plan([plan], tiny_model_path, shared_data, tmp_path, max_learner_restarts=0, eval_steps=-1)
    run_dir = tmp_path / "cpgd-test"
    message = str(failed.value)
    assert message.startswith("learner rank 1 died during learn"), message
    assert "--max_learner_restarts (0) are spent" in message
    assert f"its last checkpoint is {run_dir / 'checkpoints' / 'step_2'}" in message
    assert f"--resume_dir {run_dir}" in message
    assert [r["step"] for r in rows(run_dir)] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["max_learner_restarts"] == 0
