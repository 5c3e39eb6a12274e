"""A model learns to use its tool: multi-turn CPGD with a Python interpreter (`--env python`).

    python examples/python_tool.py [--seed 0] [--max_steps 30] [--out runs/python_tool] [-- run_cpgd flags]

1. The task: "What is 347 * 29?" (a three-digit times a two-digit number), 81,000 questions, 200 of
   them held out. The tiny local model cannot multiply such numbers in its head; with the tool it
   only has to copy numbers. The `math` oracle scores the answer inside `\\boxed{}`.
2. A warm start, cached in .cache/python_tool: the tiny model fine-tuned on a demonstrator's answers
   to training questions. 3 in 10 use the tool: a python block (the model's turn ends at its closing
   fence), the sandbox's output as the environment's turn, then the boxed result. 7 in 10 guess: the
   right product, boxed at once, which the model can imitate in form only. Greedy decoding then
   guesses, so the model starts near 0% held-out accuracy though it can use the tool.
3. CPGD through the real loop with `--env python`: each sample is an episode of up to 3 turns, the
   model's code runs in the sandbox (oat_cpgd.tools.run_python), the observation's tokens are context
   but never trained. Greedy held-out evaluation at step 0, every 10 steps and at the end.
4. A summary: the share of held-out answers that ran the tool, the tool calls and turns per training
   episode (first step -> last; the run's curves.png draws them), and held-out accuracy before -> after.

The sandbox needs root (Linux namespaces); the run refuses to start with the reason otherwise.
Flags after `--` go to run_cpgd as they are (they override these).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

from oat_cpgd.args import CPGDArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.console import logs_line, quiet
from oat_cpgd.environments.python_tool import observation
from oat_cpgd.experiment.demo import (
    demo_options,
    held_out_accuracy,
    held_out_results,
    held_out_split,
    run_flags,
    write_jsonl,
    write_splits,
)
from oat_cpgd.interface import run
from oat_cpgd.models.sft import Response, fine_tune
from oat_cpgd.models.tiny import build_tiny_model, default_corpus
from oat_cpgd.plot import read_rows

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "python_tool"
SFT_QUESTIONS = 4000
"""Training questions the demonstrator answers (the RL run draws from all of them)."""
SFT_STEPS = 600
SFT_BATCH = 64
TOOL_SHARE = (3, 10)
"""The demonstrator uses the tool on 3 questions in 10 and guesses on the others."""


def questions() -> list[dict]:
    return [{"question": f"What is {a} * {b}?", "answer": str(a * b)} for a in range(100, 1000) for b in range(10, 100)]


def demonstration(row: dict, index: int) -> Response:
    """The demonstrator's answer to the index-th question: a tool call (its turns: code, the tool's
    output, the boxed result) or, in the other cases of TOOL_SHARE, a guess."""
    a, b = row["question"].removeprefix("What is ").removesuffix("?").split(" * ")
    uses_tool, total = TOOL_SHARE
    if index % total >= uses_tool:
        return f" \\boxed{{{row['answer']}}}"
    return [
        f"\n```python\nprint({a} * {b})\n```\n",
        observation(f"{row['answer']}\n", "", timed_out=False),  # what the sandbox's output becomes
        f" \\boxed{{{row['answer']}}}",
    ]


def tiny_model(pairs: list[tuple[str, Response]]) -> Path:
    """The tiny model, its tokenizer trained on the usual corpus and on the demonstrations' text, so that
    code fences, `python`, `print` and `output` are tokens, as in a real model's vocabulary."""
    corpus = CACHE / "corpus.jsonl"
    texts = default_corpus() + [prompt + "".join(response) for prompt, response in pairs[:1000]]
    write_jsonl(corpus, [{"text": text} for text in texts])
    return build_tiny_model(CACHE / "tiny", corpus_files=[corpus])


def warm_start(train: list[dict]) -> Path:
    """The tiny model fine-tuned on the demonstrator's answers to SFT_QUESTIONS training questions (cached)."""
    rows = random.Random(0).sample(train, SFT_QUESTIONS)
    pairs = [(row["question"], demonstration(row, index)) for index, row in enumerate(rows)]
    base = tiny_model(pairs)
    return fine_tune(base, pairs, CACHE / "warm_start", steps=SFT_STEPS, batch_size=SFT_BATCH, learning_rate=1e-3)


def cpgd_flags(model: Path, data: Path, seed: int, max_steps: int, out: Path) -> list[str]:
    return [
        *run_flags("python-tool", model, data, seed, max_steps, out),
        "--env=python",
        "--oracle=math",
        "--oracle_workers=2",
        "--max_turns=3",
        "--max_episode_tokens=64",
        "--generate_max_length=24",  # a model turn
        "--eval_generate_max_length=24",
        "--prompt_max_length=32",
        "--num_samples=8",
        "--rollout_batch_size=16",
        "--rollout_batch_size_per_device=16",
        "--train_batch_size=32",
        "--train_batch_size_per_device=32",
        "--learning_rate=1e-4",
        "--lr_scheduler=constant",
        "--lr_warmup_ratio=0",
    ]


def tool_call_share(run_dir: Path, step: int) -> float:
    """The share of a held-out evaluation's answers that ran a python block."""
    results = held_out_results(run_dir, step)
    return sum("```output\n" in result["responses"][0] for result in results) / len(results)


def first_and_last(rows: list[dict], key: str) -> tuple[float, float]:
    values = [row[key] for row in rows if key in row]
    return values[0], values[-1]


def main(argv: Sequence[str] | None = None) -> Path:
    options, extra = demo_options(argv, __doc__, max_steps=30, out=REPO / "runs" / "python_tool")
    start = time.monotonic()
    train, held_out = held_out_split(questions())
    data = write_splits(CACHE / "data", train, held_out)
    log = CACHE / "warm_start.log"
    print(f"warm start: fine-tuning the tiny model on {SFT_QUESTIONS} demonstrations (cached in {CACHE}; log: {log})")
    with quiet(log, options.verbose):
        model = warm_start(train)
    flags = cpgd_flags(model, data, options.seed, options.max_steps, options.out) + ["--verbose"] * options.verbose
    args = parse_args(CPGDArgs, argv=flags + extra)
    run_dir = run(args)

    rows = read_rows(run_dir)
    curve = held_out_accuracy(rows)
    (first_step, before), (last_step, after) = curve[0], curve[-1]
    calls, turns = first_and_last(rows, "actor/tool_calls"), first_and_last(rows, "actor/turns")
    print(
        f"\nheld-out answers that ran the tool: {tool_call_share(run_dir, first_step):.1%} -> "
        f"{tool_call_share(run_dir, last_step):.1%}\n"
        f"tool calls per training episode: {calls[0]:.2f} -> {calls[1]:.2f}; turns: {turns[0]:.2f} -> {turns[1]:.2f}\n"
        f"{last_step} CPGD steps, {time.monotonic() - start:.0f} s in all; curves: {run_dir / 'curves.png'}\n"
        f"{logs_line(run_dir, args.verbose)}\n"
        f"held-out accuracy (greedy, {len(held_out)} questions never trained on): "
        f"{before:.1%} at step {first_step} -> {after:.1%} at step {last_step} "
        f"({100 * (after - before):+.1f} points)"
    )
    return run_dir


if __name__ == "__main__":
    main()
