"""Evaluation: hand-computed accuracy/pass@n/maj@n, eval sets on real rows, the evaluate entry point, and plots."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from transformers import AutoTokenizer

from oat_cpgd.args import PPOArgs
from oat_cpgd.evaluation import (
    benchmark_metrics,
    benchmark_names,
    eval_metrics,
    load_eval_sets,
    local_oracle,
    majority_answers,
    metrics_table,
    question_metrics,
    run_evaluation,
    write_eval_results,
)
from oat_cpgd.oracles import get_oracle
from oat_cpgd.plot import draw_panel, panel_series, plot_run, read_rows

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def result(rewards, answers, lengths=None):
    return {"rewards": rewards, "answers": answers, "lengths": lengths or [10] * len(rewards)}


# ---------------------------------------------------------------- the maths
@pytest.mark.parametrize(
    ("rewards", "answers", "expected"),
    [
        # 2 of 4 correct; "5" is the majority (2 votes) and correct.
        ([1.0, 0.0, 1.0, 0.0], ["5", "3", "5", None], {"accuracy": 0.5, "pass@n": 1.0, "maj@n": 1.0}),
        # A 2-2 tie goes to the answer seen first: "3", wrong.
        ([0.0, 1.0, 1.0, 0.0], ["3", "5", "5", "3"], {"accuracy": 0.5, "pass@n": 1.0, "maj@n": 0.0}),
        # The same tie seen the other way round: "5", correct.
        ([1.0, 0.0, 0.0, 1.0], ["5", "3", "3", "5"], {"accuracy": 0.5, "pass@n": 1.0, "maj@n": 1.0}),
        # None never wins the vote, even when most samples have no answer.
        ([0.0, 0.0, 1.0], [None, None, "7"], {"accuracy": 1 / 3, "pass@n": 1.0, "maj@n": 1.0}),
        # No extracted answer at all: maj@n wrong.
        ([0.0, 0.0], [None, None], {"accuracy": 0.0, "pass@n": 0.0, "maj@n": 0.0}),
        # The majority answer counts as correct when any sample giving it was scored correct.
        ([0.0, 1.0, 0.0], ["7", "7", "2"], {"accuracy": 1 / 3, "pass@n": 1.0, "maj@n": 1.0}),
        # Countdown's 0.1 for a well-formed but wrong answer is not correct.
        ([0.1, 0.1, 1.0], ["1+2", "1+2", "3*1"], {"accuracy": 1 / 3, "pass@n": 1.0, "maj@n": 0.0}),
        # n = 1: every metric is the single sample's correctness.
        ([1.0], ["4"], {"accuracy": 1.0, "pass@n": 1.0, "maj@n": 1.0}),
        ([0.0], ["4"], {"accuracy": 0.0, "pass@n": 0.0, "maj@n": 0.0}),
        ([0.0], [None], {"accuracy": 0.0, "pass@n": 0.0, "maj@n": 0.0}),
    ],
)
def test_question_metrics(rewards, answers, expected):
    metrics = question_metrics(result(rewards, answers))
    assert metrics == pytest.approx({**expected, "response_len": 10.0})


def test_benchmark_and_eval_metrics_average_questions_then_benchmarks():
    gsm8k = [
        result([1.0, 1.0], ["3", "3"], [4, 6]),  # accuracy 1, pass 1, maj 1, len 5
        result([0.0, 1.0], ["2", "3"], [10, 20]),  # accuracy .5, pass 1, maj 0 (tie -> "2"), len 15
    ]
    math = [result([0.0, 0.0], [None, "x"], [1, 3])]  # all 0, len 2
    assert benchmark_metrics(gsm8k) == pytest.approx(
        {"accuracy": 0.75, "pass@n": 1.0, "maj@n": 0.5, "response_len": 10.0}
    )
    metrics = eval_metrics({"gsm8k": gsm8k, "math": math})
    assert metrics == pytest.approx(
        {
            "eval/gsm8k/accuracy": 0.75,
            "eval/gsm8k/pass@n": 1.0,
            "eval/gsm8k/maj@n": 0.5,
            "eval/gsm8k/response_len": 10.0,
            "eval/math/accuracy": 0.0,
            "eval/math/pass@n": 0.0,
            "eval/math/maj@n": 0.0,
            "eval/math/response_len": 2.0,
            # The mean over benchmarks, not over all questions.
            "eval/average/accuracy": 0.375,
            "eval/average/pass@n": 0.5,
            "eval/average/maj@n": 0.25,
            "eval/average/response_len": 6.0,
        }
    )
    rows = metrics_table(metrics).splitlines()
    assert rows[0].split() == ["benchmark", "accuracy", "pass@n", "maj@n", "response_len"]
    assert [row.split()[0] for row in rows[1:]] == ["gsm8k", "math", "average"]
    assert [float(v) for v in rows[3].split()[1:]] == [0.375, 0.5, 0.25, 6.0]


@pytest.mark.parametrize(
    ("name", "rewards", "answers", "plain_maj", "oracle_maj"),
    [
        # 0.5, \frac12 and 1/2 are one answer with 3 votes, against "3" with 2.
        ("math", [0.0, 0.0, 1.0, 1.0, 1.0], ["3", "3", "0.5", "\\frac12", "1/2"], 0.0, 1.0),
        # The other way round: a wrong answer written three ways outvotes the right one.
        ("math", [1.0, 1.0, 0.0, 0.0, 0.0], ["3", "3", "0.25", "\\frac14", "1/4"], 1.0, 0.0),
        ("gsm8k", [0.0, 0.0, 1.0, 1.0, 1.0], ["8", "8", "7", "7.0", "007"], 0.0, 1.0),
        ("countdown", [0.1, 0.1, 1.0, 1.0, 1.0], ["1+2", "1+2", "6*4", "(6 * 4)", "6 * (4)"], 0.0, 1.0),
    ],
)
def test_maj_votes_on_equivalent_answers(name, rewards, answers, plain_maj, oracle_maj):
    same_answer = get_oracle(name, num_workers=0).same_answer
    assert question_metrics(result(rewards, answers))["maj@n"] == plain_maj
    assert question_metrics(result(rewards, answers), same_answer)["maj@n"] == oracle_maj
    assert benchmark_metrics([result(rewards, answers)], same_answer)["maj@n"] == oracle_maj


def test_majority_answers_groups_ties_and_failing_comparisons():
    same = get_oracle("math", num_workers=0).same_answer
    assert majority_answers(["3", "0.5", "\\frac12", None, None], same) == {"0.5", "\\frac12"}
    assert majority_answers(["3", "0.5", "4", "\\frac12", "4"], same) == {"0.5", "\\frac12"}  # tie: seen first
    assert majority_answers([None, None], same) == set()

    def broken(a, b):
        raise RuntimeError("boom")

    assert majority_answers(["1/2", "0.5", "0.5 "], broken) == {"0.5", "0.5 "}  # falls back to the text


def test_dropped_prompts_are_logged_per_benchmark_and_not_averaged():
    metrics = eval_metrics({"a": [result([1.0], ["1"])], "b": [result([0.0], ["2"])]}, {"a": 3, "b": 0})
    assert metrics["eval/a/dropped_prompts"] == 3.0 and metrics["eval/b/dropped_prompts"] == 0.0
    assert "eval/average/dropped_prompts" not in metrics
    assert metrics["eval/average/accuracy"] == 0.5
    assert metrics_table(metrics).splitlines()[0].split() == [
        "benchmark",
        "accuracy",
        "pass@n",
        "maj@n",
        "response_len",
    ]


class FakeRoles:
    """One actor that answers every prompt with its reference (\\boxed), written three equivalent ways, at
    once; stands in for `oat_cpgd.roles.Roles` (its submit and results)."""

    actors = [None]

    def submit(self, actor, method, prompt_ids, prompts, references, *, n, **sampling):
        assert (actor, method) == (0, "evaluate")
        writings = ["\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{1/2}", "\\boxed{7}", "\\boxed{7}"][:n]
        oracle = get_oracle("math", num_workers=0)
        results = []
        for reference in references:
            rewards, infos = oracle.get_reward(["q"] * n, writings, [reference] * n)
            answers = [info["answer"] for info in infos]
            results.append({"responses": writings, "rewards": rewards, "answers": answers, "lengths": [3] * n})
        return results

    def results(self, calls):
        return calls


def test_run_evaluation_counts_dropped_rows_and_votes_with_the_oracle(tmp_path, tiny_model_path):
    rows = [
        {"problem": "Half of one?", "answer": "\\frac{1}{2}"},
        {"problem": "No answer.", "answer": None},
        {"problem": "One over two?", "answer": "0.5"},
        {"problem": "Blank answer.", "answer": "  "},
        {"problem": "long " * 500, "answer": "1/2"},
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = PPOArgs(
        prompt_data=str(tmp_path), eval_split="test", input_key="problem", output_key="answer",
        oracle="math", prompt_max_length=64, eval_n=5, eval_temperature=1.0, eval_batch_size=1,
    )  # fmt: skip
    args.resolve()
    sets = load_eval_sets(args, AutoTokenizer.from_pretrained(tiny_model_path))
    assert sets["test"].indices == [0, 2]
    assert (sets["test"].num_bad_references, sets["test"].num_dropped) == (2, 1)

    metrics, per_bench = run_evaluation(FakeRoles(), sets, args)
    assert [question["index"] for question in per_bench["test"]] == [0, 2]
    assert metrics["eval/test/dropped_prompts"] == 3.0
    # 3 samples of 5 are right (0.5 written three ways), 2 say 7: maj@n follows the oracle's equivalence.
    assert metrics["eval/test/accuracy"] == pytest.approx(0.6)
    assert metrics["eval/test/maj@n"] == 1.0
    assert metrics == eval_metrics(per_bench, {"test": 3}, local_oracle(args).same_answer)
    assert eval_metrics(per_bench)["eval/test/maj@n"] == 0.0  # by text, "7" (2 votes) would win


def test_local_oracle_is_the_runs_oracle_without_workers():
    oracle = local_oracle(PPOArgs(oracle="countdown", format_reward=0.3, oracle_timeout=4.0))
    assert type(oracle).__name__ == "CountdownOracle"
    assert (oracle.num_workers, oracle.format_reward, oracle.timeout_s) == (0, 0.3, 4.0)
    assert oracle.get_reward(["q"], ["<answer>1 + 2</answer>"], [{"target": 3, "nums": [1, 2]}])[0] == [1.0]
    assert oracle._pool is None  # checked inline: no worker process was started


# ---------------------------------------------------------------- eval sets
@pytest.mark.parametrize(
    ("eval_split", "names"),
    [
        ("test", ["test"]),
        ("test[:100]", ["test"]),
        ("aime,amc,math", ["aime", "amc", "math"]),
        ("train[:10%], test[5:20]", ["train", "test"]),
        ("test[:50],test[50:100],test", ["test", "test_2", "test_3"]),
    ],
)
def test_benchmark_names(eval_split, names):
    assert benchmark_names(PPOArgs(eval_split=eval_split)) == names


def test_load_eval_sets_on_deepscaler_benchmarks(shared_data, tiny_model_path):
    args = PPOArgs(
        prompt_data=str(shared_data / "gsm8k"),
        eval_data=str(shared_data / "deepscaler_eval"),
        eval_split="aime,amc,math",
        max_eval=3,
        input_key="problem",
        output_key="answer",
        prompt_template="boxed",
    )
    args.resolve()  # the eval keys default to the training keys
    sets = load_eval_sets(args, AutoTokenizer.from_pretrained(tiny_model_path))
    assert list(sets) == ["aime", "amc", "math"]
    assert all(len(prompts) == 3 and prompts.indices == [0, 1, 2] for prompts in sets.values())
    assert sets["aime"].references == ["204", "025", "809"]
    assert sets["amc"].references == [142.0, 144.0, 81.0]  # AMC's answers are floats in the data
    assert sets["math"].references[2] == "\\frac{14}{3}"
    assert sets["amc"].prompts[0].endswith("put your final answer within \\boxed{}.")  # the training template

    # Scored by the real oracle, a float reference accepts the integer answer; maj@n follows its answers.
    oracle = get_oracle("math", timeout_s=None)
    responses = ["\\boxed{142}", "\\boxed{142.0}", "\\boxed{7}", "no box"]
    rewards, infos = oracle.get_reward(["q"] * 4, responses, [sets["amc"].references[0]] * 4)
    assert rewards == [1.0, 1.0, 0.0, 0.0]
    metrics = question_metrics(result(rewards, [info["answer"] for info in infos]))
    assert metrics == pytest.approx({"accuracy": 0.5, "pass@n": 1.0, "maj@n": 1.0, "response_len": 10.0})


def test_write_eval_results_round_trips(tmp_path):
    per_bench = {"amc": [{"index": 4, "prompt": "p", "reference": 142.0, **result([1.0], ["142"])}]}
    path = write_eval_results(tmp_path / "run", 20, per_bench)
    assert path == tmp_path / "run" / "eval" / "step_20.json"
    assert json.loads(path.read_text()) == per_bench


# ---------------------------------------------------------------- the entry point
@pytest.mark.slow
def test_evaluate_entry_point_end_to_end(tiny_model_path, shared_data, tmp_path):
    """A saved model answers 4 GSM8K questions twice each, in chunks of 3, through Ray and vLLM."""
    flags = f"""--pretrain {tiny_model_path} --oracle gsm8k --eval_data {shared_data / "gsm8k"} --eval_split test
        --eval_input_key question --eval_output_key final_answer --max_eval 4 --eval_n 2 --eval_temperature 1.0
        --eval_generate_max_length 16 --eval_batch_size 3 --save_path {tmp_path} --wb-run-name ev
        --gpus 1 --rollout_batch_size 4 --train_batch_size 8 --num_samples 2""".split()
    done = subprocess.run(
        [sys.executable, "-m", "oat_cpgd.experiment.evaluate", *flags],
        env=dict(os.environ), capture_output=True, text=True, cwd=REPO, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]

    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    per_bench = json.loads((tmp_path / "ev" / "eval" / "step_0.json").read_text())
    assert list(per_bench) == ["test"]
    questions = per_bench["test"]
    assert [q["index"] for q in questions] == [0, 1, 2, 3]  # chunks gathered in order
    assert [q["reference"] for q in questions] == ["18", "3", "70000", "540"]
    assert questions[0]["prompt"].startswith("Janet")
    for question in questions:
        assert len(question["responses"]) == len(question["rewards"]) == 2
        assert len(question["answers"]) == len(question["lengths"]) == 2
        assert all(0 < length <= 16 for length in question["lengths"])
    same_answer = get_oracle("gsm8k", num_workers=0).same_answer
    assert metrics == pytest.approx(eval_metrics(per_bench, {"test": 0}, same_answer))
    for bench in ("test", "average"):
        assert all(0 <= metrics[f"eval/{bench}/{name}"] <= 1 for name in ("accuracy", "pass@n", "maj@n"))
        assert 0 < metrics[f"eval/{bench}/response_len"] <= 16

    table = done.stdout.splitlines()
    header = table.index(next(line for line in table if line.startswith("benchmark")))
    assert table[header].split() == ["benchmark", "accuracy", "pass@n", "maj@n", "response_len"]
    test_row = table[header + 1].split()
    assert test_row[0] == "test" and table[header + 2].split()[0] == "average"
    assert [float(v) for v in test_row[1:]] == pytest.approx(
        [metrics[f"eval/test/{name}"] for name in ("accuracy", "pass@n", "maj@n", "response_len")], abs=1e-4
    )


# ---------------------------------------------------------------- plots
def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # from the IHDR chunk


def test_plot_run_draws_all_panels(tmp_path):
    rows = [{"step": 0, "eval/gsm8k/accuracy": 0.1, "eval/math/accuracy": 0.0, "eval/average/accuracy": 0.05}]
    for step in range(1, 7):
        rows.append(
            {
                "step": step,
                "train/reward_mean": step / 10,
                "actor/reward_mean": step / 10,
                "train/response_len": 100 - step,
                "train/policy_drift": math.nan if step == 3 else 1e-3 * step,  # run_log writes NaN as NaN
            }
        )
    rows.append({"step": 6, "eval/gsm8k/accuracy": 0.4, "eval/math/accuracy": 0.2, "eval/average/accuracy": 0.3})
    write_metrics(tmp_path / "run", rows)

    panels = panel_series(read_rows(tmp_path / "run"))
    assert panels["reward"] == {"train/reward_mean": ([1, 2, 3, 4, 5, 6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])}
    assert panels["eval accuracy"] == {"gsm8k": ([0, 6], [0.1, 0.4]), "math": ([0, 6], [0.0, 0.2]), "average": ([0, 6], [0.05, 0.3])}  # fmt: skip
    assert panels["policy drift"]["train/policy_drift"][0] == [1, 2, 4, 5, 6]

    path = plot_run(tmp_path / "run")
    assert path == tmp_path / "run" / "curves.png"
    assert png_size(path) == (1100, 800)
    assert path.stat().st_size > 20_000  # four drawn panels, not a blank image
    assert "per episode" not in panels  # no --env


def test_a_run_with_episodes_gets_a_panel_of_turns_and_tool_calls(tmp_path):
    rows = [{"step": step, "actor/reward_mean": 0.5, "actor/turns": 1 + step / 4, "actor/tool_calls": step / 4} for step in (1, 2, 3)]  # fmt: skip
    write_metrics(tmp_path / "run", rows)
    panels = panel_series(read_rows(tmp_path / "run"))
    assert panels["per episode"] == {"actor/turns": ([1, 2, 3], [1.25, 1.5, 1.75]), "actor/tool_calls": ([1, 2, 3], [0.25, 0.5, 0.75])}  # fmt: skip
    assert png_size(plot_run(tmp_path / "run")) == (1650, 800)  # a third column for the fifth panel


def test_plot_panels_without_data_say_so(tmp_path):
    # A run logging only actor metrics (no learner stats, no eval): reward falls back to actor/reward_mean.
    write_metrics(tmp_path / "run", [{"step": step, "actor/reward_mean": 0.5} for step in (1, 2)])
    panels = panel_series(read_rows(tmp_path / "run"))
    assert panels["reward"] == {"actor/reward_mean": ([1, 2], [0.5, 0.5])}
    assert [title for title, lines in panels.items() if not lines] == [
        "eval accuracy",
        "response length (tokens)",
        "policy drift",
    ]
    axes = Figure().subplots()
    draw_panel(axes, "policy drift", panels["policy drift"])
    assert [text.get_text() for text in axes.texts] == ["no data"]

    # On demand, from the command line.
    done = subprocess.run(
        [sys.executable, "-m", "oat_cpgd.plot", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "run" / "curves.png") == (1100, 800)
