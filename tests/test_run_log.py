"""RunLog's TensorBoard scalars (--use_tb) and its progress bar, on real files and a real tqdm bar."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from oat_cpgd.args import CPGDArgs
from oat_cpgd.run_log import RunLog


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} as TensorBoard shows the run's `tb/` folder (purged events left out)."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = {}
    for tag in events.Tags()["scalars"]:
        steps = [(event.step, event.value) for event in events.Scalars(tag)]
        scalars[tag] = dict(steps)
        assert len(scalars[tag]) == len(steps), f"{tag}: a step shown twice: {steps}"
    return scalars


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_tensorboard_matches_metrics(run_dir) -> None:
    expected: dict[str, dict[int, float]] = {}
    for row in metrics_rows(run_dir):
        for name, value in row.items():
            if name != "step":
                expected.setdefault(name, {})[row["step"]] = value
    scalars = tensorboard_scalars(run_dir)
    assert scalars.keys() == expected.keys()
    for name, by_step in expected.items():
        assert scalars[name].keys() == by_step.keys(), name
        for step, value in by_step.items():
            if math.isnan(value):
                assert math.isnan(scalars[name][step]), (name, step)
            else:  # TensorBoard keeps float32
                assert scalars[name][step] == pytest.approx(value, rel=1e-6), (name, step)


def test_tensorboard_scalars_equal_the_metrics_rows(tmp_path):
    log = RunLog(tmp_path, CPGDArgs(wb_run_name="run", use_tb=True), dropped_prompts=3)
    log.log_eval(0, {"eval/average/accuracy": 0.25, "eval/gsm8k/accuracy": 0.25})
    log.log_step(1, [], [0], {"train/reward_mean": 0.1, "train/pg_loss": float("nan"), "misc/step_time": 1.5})
    log.log_step(2, [], [1], {"train/reward_mean": 0.7, "train/pg_loss": -0.3, "eval/average/accuracy": 0.5})
    log.close()
    assert_tensorboard_matches_metrics(tmp_path)
    scalars = tensorboard_scalars(tmp_path)
    assert math.isnan(scalars["train/pg_loss"][1]) and scalars["data/dropped_prompts"] == {1: 3.0, 2: 3.0}
    assert scalars["eval/average/accuracy"] == {0: 0.25, 2: 0.5}


def test_without_use_tb_no_event_files_are_written(tmp_path):
    log = RunLog(tmp_path, CPGDArgs(wb_run_name="run"))
    log.log_step(1, [], [0], {"train/reward_mean": 0.5})
    log.close()
    assert not (tmp_path / "tb").exists()


def test_a_resumed_run_replaces_the_crashed_runs_later_steps(tmp_path):
    crashed = RunLog(tmp_path, CPGDArgs(wb_run_name="run", use_tb=True))
    for step in (1, 2, 3):
        crashed.log_step(step, [], [step], {"train/reward_mean": float(step)})
    crashed.close()
    resumed = RunLog(tmp_path, CPGDArgs(wb_run_name="run", use_tb=True), resume_step=1)
    for step in (2, 3, 4):
        resumed.log_step(step, [], [step], {"train/reward_mean": 10.0 * step})
    resumed.close()
    assert_tensorboard_matches_metrics(tmp_path)
    assert tensorboard_scalars(tmp_path)["train/reward_mean"] == {1: 1.0, 2: 20.0, 3: 30.0, 4: 40.0}


def test_the_progress_bar_shows_the_latest_eval_accuracy(tmp_path):
    log = RunLog(tmp_path, CPGDArgs(wb_run_name="run"))
    postfixes = []
    for step in log.progress(range(1, 4), total=3):
        # The average over benchmarks is shown, not a benchmark's own accuracy.
        evaluation = {"eval/average/accuracy": 0.375, "eval/amc/accuracy": 0.5} if step == 2 else {}
        log.log_step(step, [], [step], {"train/reward_mean": 0.1 * step, "misc/step_time": 2.0, **evaluation})
        postfixes.append(log.bar.postfix)
    log.close()
    assert postfixes[0] == "reward=0.100, step_time=2.0s"  # no evaluation yet
    # Shown from its evaluation step on, until the next evaluation.
    assert postfixes[1] == postfixes[2].replace("0.300", "0.200") == "reward=0.200, step_time=2.0s, eval_acc=0.375"


def test_the_evaluation_before_the_first_step_reaches_the_bar(tmp_path):
    log = RunLog(tmp_path, CPGDArgs(wb_run_name="run"))
    log.log_eval(0, {"eval/average/accuracy": 0.125, "eval/math/accuracy": 0.125})
    for step in log.progress(range(1, 2), total=1):
        log.log_step(step, [], [step], {"train/reward_mean": 0.5, "misc/step_time": 1.0})
    assert log.bar.postfix == "reward=0.500, step_time=1.0s, eval_acc=0.125"
    log.close()
