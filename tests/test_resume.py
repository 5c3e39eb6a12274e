"""What a resumed run may change, and what it must not: the check runs before any engine starts."""

import json

import pytest

from oat_cpgd.args import CPGDArgs
from oat_cpgd.checkpoint import prompts_fingerprint, resume_differences
from oat_cpgd.run_log import RunLog


def config(**flags) -> dict:
    args = CPGDArgs(num_samples=4, rollout_batch_size=4, train_batch_size=8, wb_run_name="run", **flags)
    args.resolve()
    return json.loads(args.to_json())


DEFAULTS = json.loads(CPGDArgs().to_json())
STATE = {"step": 2, "num_prompts": 10, "prompts_fingerprint": prompts_fingerprint([0, 1], ["a", "b"])}


def test_the_same_flags_and_data_resume():
    assert resume_differences(config(), config(), STATE, 10, STATE["prompts_fingerprint"], DEFAULTS) == []
    # Watching and run length may change: more steps, another wandb project, another Ray cluster.
    changed = config(max_steps=50, use_wb=True, ray_address="auto", save_steps=5, resume_dir="runs/run")
    assert resume_differences(config(), changed, STATE, 10, STATE["prompts_fingerprint"], DEFAULTS) == []


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"pretrain": "other/model"}, "--pretrain: 'Qwen/Qwen2.5-Math-1.5B' in the saved run, 'other/model' now"),
        ({"learning_rate": 2e-6}, "--learning_rate: 1e-06 in the saved run, 2e-06 now"),
        ({"prompt_data": "other.jsonl"}, "--prompt_data"),
        ({"critic_type": "grpo"}, "--critic_type"),
        ({"seed": 7}, "--seed: 42 in the saved run, 7 now"),
    ],
)
def test_other_model_data_or_learning_flags_are_named(flags, named):
    differences = resume_differences(config(), config(**flags), STATE, 10, STATE["prompts_fingerprint"], DEFAULTS)
    assert any(named in line for line in differences), differences


def test_a_run_saved_before_a_flag_existed_resumes_when_the_flag_keeps_its_default():
    """An older version's config.json lacks the flags added since: they count as their defaults."""
    older = {name: value for name, value in config().items() if name != "seeded_sampling"}
    assert resume_differences(older, config(), STATE, 10, STATE["prompts_fingerprint"], DEFAULTS) == []
    (line,) = resume_differences(
        older, config(seeded_sampling=False), STATE, 10, STATE["prompts_fingerprint"], DEFAULTS
    )
    assert line == "--seeded_sampling: True in the saved run, False now"


def test_a_run_saved_with_a_flag_since_removed_resumes():
    """oracle_type and pi_buffer_maxlen_per_device were flags until 2026-12-03; nothing read them."""
    older = {**config(), "oracle_type": "reward", "pi_buffer_maxlen_per_device": 64}
    assert resume_differences(older, config(), STATE, 10, STATE["prompts_fingerprint"], DEFAULTS) == []


def test_other_prompts_are_refused():
    assert resume_differences(config(), config(), STATE, 11, "x", DEFAULTS) == [
        "training prompts: 10 in the saved run, 11 now"
    ]
    (line,) = resume_differences(config(), config(), STATE, 10, prompts_fingerprint([0, 1], ["a", "c"]), DEFAULTS)
    assert "other rows or text" in line


def test_a_resumed_run_keeps_the_original_config(tmp_path):
    original = CPGDArgs(wb_run_name="run", learning_rate=1e-6)
    RunLog(tmp_path, original).close()
    saved = (tmp_path / "config.json").read_text()
    RunLog(tmp_path, CPGDArgs(wb_run_name="run", max_steps=99), resume_step=0).close()
    assert (tmp_path / "config.json").read_text() == saved


def test_nan_metrics_are_written_as_nan(tmp_path):
    log = RunLog(tmp_path, CPGDArgs(wb_run_name="run"))
    log.log_step(1, [], [0], {"train/pg_loss": float("nan"), "train/reward_mean": 0.5})
    log.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert '"train/pg_loss": NaN' in line and "null" not in line


def test_rewinding_forgets_the_steps_a_restart_replays(tmp_path):
    """The learners restarted from step 2's checkpoint: steps 3 and 4 go (and count as replayed), step 0's
    evaluation and steps 1-2 stay, and the replayed steps are then logged once."""
    log = RunLog(tmp_path, CPGDArgs(wb_run_name="run", log_samples=0))
    log.log_eval(0, {"eval/average/accuracy": 0.25})
    for step in range(1, 5):
        log.log_step(step, [], [step], {"train/reward_mean": step / 10})
    assert log.rewind(2) == 2
    assert log.steps_logged == {0, 1, 2}
    for step in (3, 4):
        log.log_step(step, [], [step], {"train/reward_mean": step})
    log.close()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row.get("train/reward_mean")) for row in metrics] == [
        (0, None), (1, 0.1), (2, 0.2), (3, 3), (4, 4)
    ]  # fmt: skip
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [row["step"] for row in samples] == [1, 2, 3, 4]
