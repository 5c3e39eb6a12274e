"""The loop under faults, with the real engines: an actor killed mid-rollout, a broken sync (and in
tests/test_chaos.py, a role killed at any moment)."""

import json

import pytest
from test_loop import countdown_args, run_and_check  # tests/ is on sys.path

from oat_cpgd.interface import run
from oat_cpgd.roles import WeightSyncError

pytestmark = pytest.mark.slow

MOVING = dict(oracle="support.loop:LengthOracle", prompt_template="{nums}", output_key="target")
"""A reward that differs within every group, so every update moves the policy."""


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_actor_is_restarted_resynced_and_its_prompts_resent(
    ray_cluster, tiny_model_path, shared_data, tmp_path
):
    """SIGKILL in the middle of step 2's rollout: Ray restarts the actor, it rejoins the weight
    transfer and gets the current weights, step 2's prompts are sampled again, and every step is
    logged once. At the end the restarted actor samples exactly as the saved model does."""
    from support.faults import KilledOnceActor

    args = countdown_args(tiny_model_path, shared_data, tmp_path, "grpo", max_steps=3, **MOVING)
    logged = run_and_check(args, tmp_path, actor_cls=KilledOnceActor)
    run_dir = tmp_path / args.wb_run_name
    assert (run_dir / "actor_killed").exists()  # it did die
    assert [r["misc/actor_restarts"] for r in logged] == [0, 1, 0]
    assert all(r["train/grad_norm"] > 0 for r in logged)  # the weights the restarted actor needs did move
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 2, 3]


def test_a_sync_that_does_not_reach_the_actors_stops_the_run(ray_cluster, tiny_model_path, shared_data, tmp_path):
    from support.faults import StaleActor

    args = countdown_args(tiny_model_path, shared_data, tmp_path, "grpo", max_steps=4, learning_rate=2e-3, **MOVING)
    with pytest.raises(WeightSyncError, match="not sampling from the trained policy"):
        run(args, actor_cls=StaleActor)
    assert len(rows(tmp_path / args.wb_run_name)) < 4  # it stopped at the first failed check
