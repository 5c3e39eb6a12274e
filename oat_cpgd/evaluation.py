"""Evaluation: the actors answer held-out benchmarks, the oracle scores them, and the maths turns that into metrics.

Per benchmark (and averaged over benchmarks under `eval/average/`):
- accuracy: mean correctness over the n samples of each question (correct: reward >= CORRECT_REWARD, 1.0);
- pass@n: share of questions with at least one correct sample;
- maj@n: share of questions whose majority answer (most common extracted answer, ties to the
  first seen) is correct; answers the oracle's `same_answer` finds equivalent (`0.5`, `\\frac12`)
  share one vote; a question without any extracted answer counts as wrong;
- response_len: mean response length in tokens;
- dropped_prompts: the benchmark's rows left out when loading (over --prompt_max_length, or a
  reference the oracle cannot use), which the other metrics do not count.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from oat_cpgd.args import Args
from oat_cpgd.data import PromptSet, load_prompts
from oat_cpgd.oracles import CORRECT_REWARD, RewardOracle, oracle_from_flags

if TYPE_CHECKING:
    from oat_cpgd.roles import ActorCall, Roles

METRICS = ("accuracy", "pass@n", "maj@n", "response_len")
AVERAGE = "average"
DROPPED = "dropped_prompts"
"""Per benchmark only (not averaged), and not in `metrics_table`."""

SameAnswer = Callable[[str, str], bool]


def local_oracle(args: Args) -> RewardOracle:
    """The run's oracle for this process's own checks (`check_reference`, `same_answer`): it runs
    checks inline and starts no worker processes, so it is cheap to build and needs no closing."""
    return oracle_from_flags(args, num_workers=0)


def eval_splits(args: Args) -> list[str]:
    """The comma-separated --eval_split, one split (slices allowed) per benchmark."""
    return [split.strip() for split in args.eval_split.split(",") if split.strip()]


def benchmark_names(args: Args) -> list[str]:
    """A readable, unique name per eval split: `test[:100]` is `test`; a repeated name gets `_2`, `_3`, ..."""
    names: list[str] = []
    for split in eval_splits(args):
        base = re.sub(r"\[.*\]$", "", split)
        name, copy = base, 1
        while name in names:
            copy += 1
            name = f"{base}_{copy}"
        names.append(name)
    return names


def load_eval_sets(args: Args, tokenizer, oracle: RewardOracle | None = None) -> dict[str, PromptSet]:
    """Each benchmark's prompts (at most --max_eval), rendered exactly like the training prompts.

    Rows whose reference `oracle` (default: `local_oracle(args)`) cannot use are dropped and counted.
    """
    oracle = oracle or local_oracle(args)
    return {
        name: load_prompts(
            args,
            tokenizer,
            source=args.eval_data,
            split=split,
            input_key=args.eval_input_key,
            output_key=args.eval_output_key,
            max_items=args.max_eval,
            check_reference=oracle.check_reference,
        )  # fmt: skip
        for name, split in zip(benchmark_names(args), eval_splits(args), strict=True)
    }


def majority_answers(answers: list[str | None], same_answer: SameAnswer | None = None) -> set[str]:
    """The answers (as written) that make up the most voted answer: empty without any answer.

    Each answer joins the first earlier group whose first answer `same_answer` (default: the base
    oracle's, equal text after strip) finds the same, or starts a group; the largest group wins, ties
    to the one seen first. A `same_answer` that raises compares as the base oracle's instead.
    """
    same = same_answer or RewardOracle.same_answer

    def equivalent(a: str, b: str) -> bool:
        try:
            return bool(same(a, b))
        except Exception:
            return RewardOracle.same_answer(a, b)

    # Counter keeps first-seen order; identical texts are one answer without asking same_answer.
    groups: list[tuple[list[str], int]] = []  # (texts, votes), the first text represents the group
    for text, votes in Counter(answer for answer in answers if answer is not None).items():
        for i, (texts, group_votes) in enumerate(groups):
            if equivalent(texts[0], text):
                texts.append(text)
                groups[i] = (texts, group_votes + votes)
                break
        else:
            groups.append(([text], votes))
    if not groups:
        return set()
    # max keeps the first of equal counts, which breaks ties as specified.
    return set(max(groups, key=lambda group: group[1])[0])


def question_metrics(result: dict, same_answer: SameAnswer | None = None) -> dict[str, float]:
    """One question's accuracy, pass@n, maj@n and response_len from its rewards, answers and lengths.

    `same_answer` (the oracle's) decides which answers vote together for maj@n. Answers of samples
    whose check timed out or failed are None (the oracle's info), so it never sees those.
    """
    correct = [reward >= CORRECT_REWARD for reward in result["rewards"]]
    majority = majority_answers(result["answers"], same_answer)
    # The majority is correct when any sample giving one of its answers was scored correct.
    majority_correct = any(ok for ok, answer in zip(correct, result["answers"], strict=True) if answer in majority)
    return {
        "accuracy": float(np.mean(correct)),
        "pass@n": float(any(correct)),
        "maj@n": float(majority_correct),
        "response_len": float(np.mean(result["lengths"])),
    }


def benchmark_metrics(results: list[dict], same_answer: SameAnswer | None = None) -> dict[str, float]:
    """The question metrics averaged over a benchmark's questions (keys without the `eval/<bench>/` prefix)."""
    per_question = [question_metrics(result, same_answer) for result in results]
    return {name: float(np.mean([metrics[name] for metrics in per_question])) for name in METRICS}


def eval_metrics(
    per_bench: dict[str, list[dict]],
    dropped: dict[str, int] | None = None,
    same_answer: SameAnswer | None = None,
) -> dict[str, float]:
    """`eval/<bench>/<metric>` for every benchmark, and `eval/average/<metric>`: the mean over benchmarks.

    `dropped`: each benchmark's rows dropped when loading, logged as `eval/<bench>/dropped_prompts`.
    `same_answer`: the oracle's, for maj@n (see `question_metrics`).
    """
    by_bench = {bench: benchmark_metrics(results, same_answer) for bench, results in per_bench.items()}
    by_bench[AVERAGE] = {name: float(np.mean([m[name] for m in by_bench.values()])) for name in METRICS}
    for bench, count in (dropped or {}).items():
        by_bench[bench][DROPPED] = float(count)
    return {f"eval/{bench}/{name}": value for bench, metrics in by_bench.items() for name, value in metrics.items()}


def run_evaluation(
    roles: Roles, eval_sets: dict[str, PromptSet], args: Args, oracle: RewardOracle | None = None
) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """Answer every benchmark with the actors; returns the metrics and the per-question results.

    Prompts go in chunks of --eval_batch_size, dealt round-robin over all benchmarks so every actor
    stays busy. Each result has index (row in the split), prompt, reference, responses, rewards,
    answers and lengths. `oracle` (default: `local_oracle(args)`) compares answers for maj@n.
    """
    sampling = {
        "n": args.eval_n,
        "temperature": args.eval_temperature,
        "top_p": args.eval_top_p,
        "max_tokens": args.eval_generate_max_length,
    }
    size = args.eval_batch_size
    calls: dict[str, list[ActorCall]] = {}
    dealt = 0
    for bench, prompts in eval_sets.items():
        calls[bench] = []
        for start in range(0, len(prompts), size):
            chunk = slice(start, start + size)
            calls[bench].append(
                roles.submit(
                    dealt % len(roles.actors),
                    "evaluate",
                    prompts.prompt_ids[chunk],
                    prompts.prompts[chunk],
                    prompts.references[chunk],
                    **sampling,
                )
            )
            dealt += 1

    per_bench = {}
    for bench, prompts in eval_sets.items():
        answered = [result for chunk in roles.results(calls[bench]) for result in chunk]
        per_bench[bench] = [
            {"index": index, "prompt": prompt, "reference": reference, **result}
            for index, prompt, reference, result in zip(
                prompts.indices, prompts.prompts, prompts.references, answered, strict=True
            )
        ]
    dropped = {bench: prompts.total_dropped for bench, prompts in eval_sets.items()}
    return eval_metrics(per_bench, dropped, (oracle or local_oracle(args)).same_answer), per_bench


def write_eval_results(run_dir: str | Path, step: int, per_bench: dict[str, list[dict]]) -> Path:
    """Write the per-question results to `<run_dir>/eval/step_<step>.json`; returns that path."""
    path = Path(run_dir) / "eval" / f"step_{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=str: a reference column may hold any type the data loader produced.
    path.write_text(json.dumps(per_bench, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def metrics_table(metrics: dict[str, float]) -> str:
    """A plain-text table of `eval_metrics`: one row per benchmark, the average last."""
    benches = list(dict.fromkeys(key.split("/")[1] for key in metrics if key.startswith("eval/")))
    width = max(len(name) for name in ["benchmark", *benches])
    lines = [f"{'benchmark':<{width}}" + "".join(f"  {name:>12}" for name in METRICS)]
    for bench in benches:
        lines.append(f"{bench:<{width}}" + "".join(f"  {metrics[f'eval/{bench}/{name}']:>12.4f}" for name in METRICS))
    return "\n".join(lines)
