"""The first-contact run: a user's oracle and no schedule flags must learn.

    python benchmark/default_schedule.py [--seeds 0 1 2] [--steps 40] [--schedules default constant oat_count]

run_cpgd on the tiny random model (`python -m oat_cpgd.models.tiny`) with an oracle of the user's
own (SevensOracle below, passed as `--oracle default_schedule:SevensOracle`): 320 training prompts
(CountDown's numbers, as text), 8 per step, 8 samples each, 64 responses per optimizer step, lr 1e-3,
40 steps. Three LR schedules, otherwise the same run:
- default: no schedule flags; the cosine schedule ends with the run;
- constant: `--lr_scheduler constant`;
- oat_count: `--max_step_adjustment 1`, the default before: oat's count of 320 / 64 = 5 optimizer steps,
  a schedule that ended after 5 of the run's 40 (it now holds its final LR from there, with a warning).
Held-out: greedy accuracy on 128 other prompts (the share of answers that are all '7's, reward 1) at
step 0 and at the end; and the training reward's mean over the first and the last 3 steps, per seed. Writes .cache/bench/default_schedule.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from oat_cpgd.oracles import RewardOracle
from oat_cpgd.plot import read_rows
from oat_cpgd.run_log import EVAL_ACCURACY

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / ".cache" / "bench"
DATA = REPO.parent / "shared" / "data" / "countdown" / "train_head.jsonl"
SCHEDULES = {"default": [], "constant": ["--lr_scheduler=constant"], "oat_count": ["--max_step_adjustment=1"]}


class SevensOracle(RewardOracle):
    """A user's toy task that a random tiny model can learn: the share of the response's characters that are '7'."""

    def reward(self, prompt, response, reference):
        return response.count("7") / max(len(response), 1), {}


def run_one(schedule: str, seed: int, steps: int, model: Path, out: Path) -> dict:
    name = f"{schedule}-seed{seed}"
    command = [
        *(sys.executable, "-m", "oat_cpgd.experiment.run_cpgd", f"--pretrain={model}", f"--prompt_data={DATA}"),
        *("--train_split=train[:320]", "--eval_split=train[-128:]", "--input_key=nums", "--output_key=target"),
        *("--prompt_template={nums}", "--oracle=default_schedule:SevensOracle", "--oracle_workers=1"),
        *("--gpus=1", "--num_samples=8", "--rollout_batch_size=8", "--rollout_batch_size_per_device=8"),
        *("--train_batch_size=64", "--train_batch_size_per_device=16", "--mini_train_batch_size_per_device=16"),
        *("--generate_max_length=12", "--eval_generate_max_length=12", "--prompt_max_length=64"),
        *("--learning_rate=1e-3", f"--max_steps={steps}", f"--eval_steps={steps}", f"--seed={seed}"),
        *(f"--save_path={out}", f"--wb_run_name={name}", "--log_samples=0"),
        *SCHEDULES[schedule],
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # the oracle's module, for the Ray workers too
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    rows = read_rows(out / name)
    train = [row["actor/reward_mean"] for row in rows if "actor/reward_mean" in row]
    held_out = [row[EVAL_ACCURACY] for row in rows if EVAL_ACCURACY in row]
    return {
        "schedule": schedule,
        "seed": seed,
        "train_first3": statistics.mean(train[:3]),
        "train_last3": statistics.mean(train[-3:]),
        "held_out_before": held_out[0] if held_out else None,
        "held_out_after": held_out[-1] if held_out else None,
        "final_lr": rows[-1].get("train/lr"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    options = parser.parse_args()
    from oat_cpgd.models.tiny import build_tiny_model

    model = build_tiny_model(REPO / ".cache" / "test_models" / "tiny")
    out = OUT_DIR / "default_schedule_runs"
    shutil.rmtree(out, ignore_errors=True)
    results = [run_one(s, seed, options.steps, model, out) for seed in options.seeds for s in options.schedules]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "default_schedule.json").write_text(json.dumps(results, indent=2))
    print("| schedule | seed | train reward, first 3 -> last 3 steps | held-out accuracy before -> after | final LR |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['schedule']} | {r['seed']} | {r['train_first3']:.3f} -> {r['train_last3']:.3f} | "
            f"{r['held_out_before']} -> {r['held_out_after']} | {r['final_lr']} |"
        )


if __name__ == "__main__":
    main()
