"""`make demo`: CPGD teaches a small model to answer as the oracle asks, on questions it never trained on.

    python -m oat_cpgd.experiment.demo [--seed 0] [--max_steps 40] [--out runs/demo] [--verbose] [-- run_cpgd flags]

1. The task: "What is 47 + 5?" (a two-digit plus a one-digit number). The `math` oracle
   (math-verify) scores the answer inside `\\boxed{}`, and nothing else. The 810 questions are
   split once, at random, into 610 training and 200 held-out questions.
2. A warm start, cached in .cache/demo: the tiny local model (random weights) fine-tuned on
   answers to the training questions. They are right, but only 3 in 10 of them are boxed; the
   others say "The answer is 52.", as a sloppy demonstrator would. Greedy decoding then writes the
   unboxed style, so the model starts near 0% held-out accuracy while it can often add.
3. CPGD through the real loop (vLLM actor, DeepSpeed learner, Ray, the oracle's worker pool) on
   training questions only. The loop evaluates greedy answers to the held-out questions at step
   0, every 10 steps and at the end.
4. A summary: held-out accuracy before -> after; the share of held-out answers whose number is
   right in either style (what the warm start taught, which RL need not change); steps; time;
   the run's curves.png; and its logs folder, where vLLM's, Ray's and DeepSpeed's output went
   (--verbose: on the console instead).

What RL learns here is a behaviour the warm start already has (box the answer), from the reward
alone: the first thing it learns on real models too (R1-zero's format). It is not arithmetic:
see docs/RESULTS.md, "The demo", for what happened when RL had to improve the sums themselves.
Flags after `--` go to run_cpgd as they are (they override the demo's).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from oat_cpgd.args import CPGDArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.console import logs_line, quiet
from oat_cpgd.interface import run
from oat_cpgd.models.sft import fine_tune
from oat_cpgd.models.tiny import build_tiny_model
from oat_cpgd.oracles.gsm8k import extract_answer
from oat_cpgd.plot import read_rows

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "demo"
NUM_HELD_OUT = 200
SFT_STEPS = 700
"""Enough for the warm start to get most held-out sums right (in either style)."""


def questions() -> list[dict]:
    """Every question of the task with its reference answer."""
    return [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(10, 100) for b in range(1, 10)]


def held_out_split(rows: list[dict], seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(training, held-out) rows: NUM_HELD_OUT of them held out at random, the same split for a given seed."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[NUM_HELD_OUT:], rows[:NUM_HELD_OUT]


def split_questions(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(training, held-out) questions: a fixed random split, the same for every run seed."""
    return held_out_split(questions(), seed)


BOXED_SHARE = (3, 10)
"""The warm start's answers: 3 in 10 state the answer as `\\boxed{N}` (what the oracle reads), 7 in 10
as "The answer is N." (which it scores 0)."""


def demonstrations(row: dict) -> list[str]:
    """The warm start's answers to one question, in both styles, in the proportion BOXED_SHARE."""
    boxed, total = BOXED_SHARE
    return [f" \\boxed{{{row['answer']}}}"] * boxed + [f" The answer is {row['answer']}."] * (total - boxed)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def warm_start(train: list[dict]) -> Path:
    """The tiny model fine-tuned on the training questions' answers (built once, then cached)."""
    base = build_tiny_model(CACHE / "tiny")
    pairs = [(row["question"], answer) for row in train for answer in demonstrations(row)]
    return fine_tune(base, pairs, CACHE / "warm_start", steps=SFT_STEPS, learning_rate=1e-3)


def cpgd_flags(model: Path, data: Path, seed: int, max_steps: int, out: Path) -> list[str]:
    return [
        *run_flags("demo", model, data, seed, max_steps, out),
        "--num_prompt_epoch=10",  # --max_steps ends the run
        "--oracle=math",
        "--oracle_workers=1",
        "--num_samples=8",
        "--rollout_batch_size=16",
        "--rollout_batch_size_per_device=16",
        "--train_batch_size=32",
        "--train_batch_size_per_device=32",
        "--generate_max_length=12",
        "--prompt_max_length=32",
        "--learning_rate=1e-4",
        "--lr_scheduler=constant",
        "--lr_warmup_ratio=0",
        "--max_step_adjustment=8",  # oat counts one optimizer step per 32 prompts, not per 32 responses
        "--eval_generate_max_length=12",
    ]


def run_flags(name: str, model: Path, data: Path, seed: int, max_steps: int, out: Path) -> list[str]:
    """A demo run's model, data (write_splits' folder of questions and answers), length, seed, folder, and
    held-out evaluation (at step 0, every 10 steps and at the end), on one device."""
    return [
        f"--pretrain={model}",
        "--gpus=1",
        f"--prompt_data={data}",
        "--train_split=train",
        "--input_key=question",
        "--output_key=answer",
        f"--max_steps={max_steps}",
        "--eval_split=test",
        "--eval_steps=10",
        f"--max_eval={NUM_HELD_OUT}",
        f"--seed={seed}",
        f"--save_path={out}",
        f"--wb_run_name={name}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}",  # a new folder each time
        "--save_steps=-1",
    ]


def held_out_results(run_dir: Path, step: int) -> list[dict]:
    """A held-out evaluation's results, one per question (its responses, rewards, reference)."""
    return json.loads((run_dir / "eval" / f"step_{step}.json").read_text())["test"]


def right_number_share(run_dir: Path, step: int) -> float:
    """The share of a held-out evaluation's answers whose final number is the sum, boxed or not."""
    results = held_out_results(run_dir, step)
    answers = [extract_answer(result["responses"][0])[0] for result in results]
    return sum(answer == result["reference"] for answer, result in zip(answers, results, strict=True)) / len(results)


def held_out_accuracy(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, accuracy) of every held-out evaluation in a run's metrics rows."""
    key = "eval/test/accuracy"
    return [(row["step"], row[key]) for row in rows if key in row]


def demo_options(
    argv: Sequence[str] | None, description: str, *, max_steps: int, out: Path
) -> tuple[argparse.Namespace, list[str]]:
    """A demo script's options (--seed, --max_steps, --out, --verbose) and the run_cpgd flags after `--`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="the RL run's seed (the warm start is shared)")
    parser.add_argument("--max_steps", type=int, default=max_steps, help="CPGD steps")
    parser.add_argument("--out", type=Path, default=out, help="folder for the run")
    parser.add_argument("--verbose", action="store_true", help="every library's output on the console, as printed")
    return parser.parse_args(ours), extra


def write_splits(folder: Path, train: list[dict], held_out: list[dict]) -> Path:
    """A folder of split files, train.jsonl and test.jsonl (--prompt_data with --train_split train)."""
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", held_out)
    return folder


def main(argv: Sequence[str] | None = None) -> Path:
    options, extra = demo_options(argv, __doc__, max_steps=40, out=REPO / "runs" / "demo")
    start = time.monotonic()
    train, held_out = split_questions()
    data = write_splits(CACHE / "data", train, held_out)
    log = CACHE / "warm_start.log"
    print(f"warm start: fine-tuning the tiny model on {len(train)} training questions (cached in {CACHE}; log: {log})")
    with quiet(log, options.verbose):  # transformers' and DeepSpeed's output
        model = warm_start(train)
    flags = cpgd_flags(model, data, options.seed, options.max_steps, options.out) + ["--verbose"] * options.verbose
    args = parse_args(CPGDArgs, argv=flags + extra)
    run_dir = run(args)

    curve = held_out_accuracy(read_rows(run_dir))
    (first_step, before), (last_step, after) = curve[0], curve[-1]
    print(
        f"\nheld-out accuracy (greedy, {len(held_out)} questions never trained on): "
        f"{before:.1%} at step {first_step} -> {after:.1%} at step {last_step} "
        f"({100 * (after - before):+.1f} points)\n"
        f"right sums in either style: {right_number_share(run_dir, first_step):.1%} -> "
        f"{right_number_share(run_dir, last_step):.1%}\n"
        f"{last_step} CPGD steps, {time.monotonic() - start:.0f} s in all; curves: {run_dir / 'curves.png'}\n"
        f"{logs_line(run_dir, args.verbose)}"
    )
    return run_dir


if __name__ == "__main__":
    main()
