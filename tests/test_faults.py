"""The loop under a sync that does not reach the actors, with the real engines (a role killed at any
moment: tests/test_chaos.py)."""

import json

import pytest
from test_loop import countdown_args  # tests/ is on sys.path

from oat_cpgd.interface import run
from oat_cpgd.roles import WeightSyncError

pytestmark = pytest.mark.slow

MOVING = dict(oracle="support.loop:LengthOracle", prompt_template="{nums}", output_key="target")
"""A reward that differs within every group, so every update moves the policy."""


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_sync_that_does_not_reach_the_actors_stops_the_run(ray_cluster, tiny_model_path, shared_data, tmp_path):
    from support.faults import StaleActor

    args = countdown_args(tiny_model_path, shared_data, tmp_path, "grpo", max_steps=4, learning_rate=2e-3, **MOVING)
    with pytest.raises(WeightSyncError, match="not sampling from the trained policy"):
        run(args, actor_cls=StaleActor)
    assert len(rows(tmp_path / args.wb_run_name)) < 4  # it stopped at the first failed check
