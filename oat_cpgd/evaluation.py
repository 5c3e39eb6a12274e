"""Evaluation: the actors answer held-out benchmarks, the oracle scores them, and the maths turns that into metrics.

Per benchmark (and averaged over benchmarks under `eval/average/`):
- accuracy: mean correctness over the n samples of each question (correct: reward >= 1.0);
- pass@n: share of questions with at least one correct sample;
- maj@n: share of questions whose majority answer (most common extracted answer, ties to the
  first seen) is correct; a question without any extracted answer counts as wrong;
- response_len: mean response length in tokens.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import ray

from oat_cpgd.args import Args
from oat_cpgd.data import PromptSet, load_prompts

CORRECT_REWARD = 1.0
"""The oracles' score for a correct answer; format rewards (e.g. countdown's 0.1) stay below it."""
METRICS = ("accuracy", "pass@n", "maj@n", "response_len")
AVERAGE = "average"


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


def load_eval_sets(args: Args, tokenizer) -> dict[str, PromptSet]:
    """Each benchmark's prompts (at most --max_eval), rendered exactly like the training prompts."""
    return {
        name: load_prompts(
            args,
            tokenizer,
            source=args.eval_data,
            split=split,
            input_key=args.eval_input_key,
            output_key=args.eval_output_key,
            max_items=args.max_eval,
        )  # fmt: skip
        for name, split in zip(benchmark_names(args), eval_splits(args), strict=True)
    }


def question_metrics(result: dict) -> dict[str, float]:
    """One question's accuracy, pass@n, maj@n and response_len from its rewards, answers and lengths."""
    correct = [reward >= CORRECT_REWARD for reward in result["rewards"]]
    votes = Counter(answer for answer in result["answers"] if answer is not None)
    # most_common orders equal counts by first occurrence, which breaks ties as specified.
    majority = votes.most_common(1)[0][0] if votes else None
    majority_correct = majority is not None and any(
        ok for ok, answer in zip(correct, result["answers"], strict=True) if answer == majority
    )
    return {
        "accuracy": float(np.mean(correct)),
        "pass@n": float(any(correct)),
        "maj@n": float(majority_correct),
        "response_len": float(np.mean(result["lengths"])),
    }


def benchmark_metrics(results: list[dict]) -> dict[str, float]:
    """The question metrics averaged over a benchmark's questions (keys without the `eval/<bench>/` prefix)."""
    per_question = [question_metrics(result) for result in results]
    return {name: float(np.mean([metrics[name] for metrics in per_question])) for name in METRICS}


def eval_metrics(per_bench: dict[str, list[dict]]) -> dict[str, float]:
    """`eval/<bench>/<metric>` for every benchmark, and `eval/average/<metric>`: the mean over benchmarks."""
    by_bench = {bench: benchmark_metrics(results) for bench, results in per_bench.items()}
    by_bench[AVERAGE] = {name: float(np.mean([m[name] for m in by_bench.values()])) for name in METRICS}
    return {f"eval/{bench}/{name}": value for bench, metrics in by_bench.items() for name, value in metrics.items()}


def run_evaluation(
    actors: list, eval_sets: dict[str, PromptSet], args: Args
) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """Answer every benchmark with the actors; returns the metrics and the per-question results.

    Prompts go in chunks of --eval_batch_size, dealt round-robin over all benchmarks so every actor
    stays busy. Each result has index (row in the split), prompt, reference, responses, rewards,
    answers and lengths.
    """
    sampling = {
        "n": args.eval_n,
        "temperature": args.eval_temperature,
        "top_p": args.eval_top_p,
        "max_tokens": args.eval_generate_max_length,
    }
    size = args.eval_batch_size
    futures: dict[str, list] = {}
    dealt = 0
    for bench, prompts in eval_sets.items():
        futures[bench] = []
        for start in range(0, len(prompts), size):
            chunk = slice(start, start + size)
            futures[bench].append(
                actors[dealt % len(actors)].evaluate.remote(
                    prompts.prompt_ids[chunk], prompts.prompts[chunk], prompts.references[chunk], **sampling
                )
            )
            dealt += 1

    per_bench = {}
    for bench, prompts in eval_sets.items():
        answered = [result for chunk in ray.get(futures[bench]) for result in chunk]
        per_bench[bench] = [
            {"index": index, "prompt": prompt, "reference": reference, **result}
            for index, prompt, reference, result in zip(
                prompts.indices, prompts.prompts, prompts.references, answered, strict=True
            )
        ]
    return eval_metrics(per_bench), per_bench


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
