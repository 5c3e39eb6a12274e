"""Seconds per RL step: oat_cpgd against TRL's GRPOTrainer on the same job, in one run, interleaved.

    python benchmark/step_time.py [--steps 30] [--pairs 2] [--warmup 3] [--no-memory]

The job (issue 12): the tiny local model, 8 chat-formatted GSM8K prompts x 8 samples per step,
32 new tokens at temperature 1, lr 1e-3 constant, the share-of-7s reward
(benchmark/jobs/sevens.py), one optimizer step per rollout, fp32.
- TRL 1.16 `GRPOTrainer` (benchmark/jobs/trl_grpo.py) in its own virtual environment, created
  here under .cache/bench/trl-venv with pinned versions: HF generate, TRL's defaults otherwise
  (gradient checkpointing on, per-device batch 8 with 8 accumulation steps), but fp32.
- `python -m oat_cpgd.experiment.run_grpo --gpus 1`: micro-batches of 8 as TRL's, synchronous,
  then `--asynchronous` (the next rollout overlaps learning).
Runs go TRL, oat_cpgd, oat_cpgd async, TRL, ... (--pairs rounds), so load from elsewhere hits all
alike. The table gives medians over the steps after --warmup, of every round together: s/step, the
phases (generate = generation + scoring; learn; weight sync), the mean reward of the first and
last 5 steps (each must learn), and the speed-up over TRL.
Then benchmark/jobs/learner_overhead.py: the learner against a bare DeepSpeed loop on the same
batch, and (unless --no-memory) its peak memory against response length on SmolLM2-135M.

Threads: every core this process may use, for each process in turn (oat_cpgd's learner gets
them through --learner_threads' default; vLLM's CPU backend binds its own). Writes
.cache/bench/step_time.json and .cache/bench/step_time.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jobs import grpo_job as job  # benchmark/jobs/grpo_job.py (this script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
OUT_DIR = CACHE / "bench"
TRL_VENV = OUT_DIR / "trl-venv"
TRL_PINS = ("torch==2.13.0", "trl==1.16.0", "transformers==5.19.0", "accelerate", "datasets")
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
JOBS = Path(__file__).with_name("jobs")


def trl_python() -> str:
    """The TRL environment's Python, created on first use (a few minutes, from the package index)."""
    python = TRL_VENV / "bin" / "python"
    marker = TRL_VENV / ".installed"
    if not marker.exists() or marker.read_text() != " ".join(TRL_PINS):
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PINS], check=True)
        marker.write_text(" ".join(TRL_PINS))
    return str(python)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XDG_CACHE_HOME=str(CACHE),
        HF_HOME=str(CACHE / "huggingface"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        VLLM_CACHE_ROOT=str(CACHE / "vllm"),
        TORCH_EXTENSIONS_DIR=str(CACHE / "torch_extensions"),
        RAY_TMPDIR=os.environ.get("RAY_TMPDIR", str(CACHE / "ray")),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS=str(len(os.sched_getaffinity(0))),
    )
    return env


def run_trl(model: str, steps: int, out: Path) -> dict:
    result = out / "trl.json"
    command = [trl_python(), str(JOBS / "trl_grpo.py"), "--model", model, "--data", str(GSM8K)]
    start = time.perf_counter()
    subprocess.run([*command, "--steps", str(steps), "--out", str(result)], check=True, env=environment(), cwd=out)
    wall = time.perf_counter() - start
    data = json.loads(result.read_text())
    return {
        "wall": wall,
        "step": data["step_time"],
        "generate": data["generate_time"],
        "learn": [s - g for s, g in zip(data["step_time"], data["generate_time"], strict=False)],
        "sync": [0.0] * len(data["step_time"]),
        "reward": data["reward"],
        "threads": data["threads"],
    }


def run_oat(model: str, steps: int, out: Path, asynchronous: bool) -> dict:
    name = "oat_async" if asynchronous else "oat"
    flags = {
        "gpus": 1,
        "pretrain": model,
        "prompt_data": str(GSM8K.parent),
        "input_key": "question",
        "output_key": "answer",
        "apply_chat_template": True,
        "oracle": "benchmark.jobs.sevens:SevensOracle",
        "num_samples": job.SAMPLES,
        "rollout_batch_size": job.PROMPTS,
        "rollout_batch_size_per_device": job.PROMPTS,
        "train_batch_size": job.PROMPTS * job.SAMPLES,
        "train_batch_size_per_device": job.MICRO_BATCH,
        "mini_train_batch_size_per_device": job.MICRO_BATCH,
        "generate_max_length": job.NEW_TOKENS,
        "temperature": job.TEMPERATURE,
        "learning_rate": job.LEARNING_RATE,
        "lr_scheduler": "constant",
        "lr_warmup_ratio": 0.0,
        "max_steps": steps,
        "eval_steps": -1,
        "save_path": str(out),
        "wb_run_name": name,
    }
    command = [sys.executable, "-m", "oat_cpgd.experiment.run_grpo"]
    for flag, value in flags.items():
        command += [f"--{flag}"] if value is True else [f"--{flag}", str(value)]
    if asynchronous:
        command.append("--asynchronous")
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment(), cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "wall": wall,
        "step": [r["misc/step_time"] for r in rows],
        "generate": [r["misc/rollout_time"] for r in rows],
        "learn": [r["misc/learn_time"] for r in rows],
        "sync": [r["misc/weight_sync_time"] for r in rows],
        # The wait for the sync check, collected behind the next rollout (0 at step 1: no sync before it).
        "check": [r.get("misc/sync_check_time", 0.0) for r in rows],
        "reward": [r["actor/reward_mean"] for r in rows],
        "threads": rows[-1]["misc/learner_threads"],
    }


def summary(runs: list[dict], warmup: int) -> dict:
    def median(key):
        return statistics.median(v for run in runs for v in run[key][warmup:])

    rewards = [run["reward"] for run in runs]
    return {
        "s_per_step": median("step"),
        "generate": median("generate"),
        "learn": median("learn"),
        "sync": median("sync"),
        "check": median("check") if "check" in runs[0] else None,
        "reward_first": statistics.mean(statistics.mean(r[:5]) for r in rewards),
        "reward_last": statistics.mean(statistics.mean(r[-5:]) for r in rewards),
        "wall": statistics.median(run["wall"] for run in runs),
        "threads": runs[0]["threads"],
        "per_round_s_per_step": [statistics.median(run["step"][warmup:]) for run in runs],
    }


def plot(table: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5))
    axes = figure.add_subplot()
    names = list(table)
    bottom = [0.0] * len(names)
    for phase in ("generate", "learn", "sync"):
        values = [table[name][phase] for name in names]
        axes.barh(names, values, left=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xlabel("median seconds per step (phases; async overlaps them)")
    axes.legend()
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    options = parser.parse_args()
    from oat_cpgd.models.tiny import build_tiny_model

    model = str(build_tiny_model(CACHE / "test_models" / "tiny"))
    out = OUT_DIR / "step_time"
    shutil.rmtree(out, ignore_errors=True)  # this benchmark's own runs, from last time
    runs: dict[str, list[dict]] = {"TRL GRPOTrainer": [], "oat_cpgd": [], "oat_cpgd --asynchronous": []}
    for round_index in range(options.pairs):
        for name in runs:
            folder = out / f"round{round_index}"
            folder.mkdir(parents=True, exist_ok=True)
            print(f"round {round_index + 1}/{options.pairs}: {name}", flush=True)
            if name.startswith("TRL"):
                runs[name].append(run_trl(model, options.steps, folder))
            else:
                runs[name].append(run_oat(model, options.steps, folder, asynchronous="async" in name))
    table = {name: summary(name_runs, options.warmup) for name, name_runs in runs.items()}
    trl = table["TRL GRPOTrainer"]["s_per_step"]

    overhead_json = out / "learner_overhead.json"
    command = [sys.executable, str(JOBS / "learner_overhead.py"), "--model", model, "--data", str(GSM8K)]
    command += ["--out", str(overhead_json)]
    if not options.no_memory:
        from oat_cpgd.models.smollm2 import build_smollm2

        command += ["--memory-model", str(build_smollm2(CACHE / "test_models" / "smollm2"))]
    subprocess.run(command, check=True, env=environment(), cwd=REPO)
    overhead = json.loads(overhead_json.read_text())

    print(f"\nStep time, {options.steps} steps x {options.pairs} rounds, medians after {options.warmup} warm-up steps")
    print(f"{'':26} {'s/step':>7} {'generate':>9} {'learn':>7} {'sync':>6} {'reward first->last':>19} {'vs TRL':>7}")
    for name, row in table.items():
        rewards = f"{row['reward_first']:.3f} -> {row['reward_last']:.3f}"
        print(
            f"{name:26} {row['s_per_step']:7.2f} {row['generate']:9.2f} {row['learn']:7.2f} {row['sync']:6.3f} "
            f"{rewards:>19} {trl / row['s_per_step']:6.2f}x"
        )
    for name, row in table.items():
        if row["check"] is not None:
            share = row["check"] / row["s_per_step"]
            print(f"{name}: the sync check's wait {row['check'] * 1000:.1f} ms, {share:.1%} of a step (target <= 2%)")
    medians = overhead["median"]
    print(f"\nLearner on one step's batch ({overhead['tokens']} tokens, {overhead['threads']} threads), median s:")
    for name in ("bare", "learner", "packed"):
        print(f"  {name:8} {medians[name]:.3f}  ({medians[name] / medians['bare']:.2f}x the bare DeepSpeed loop)")
    for row in overhead.get("memory", []):
        print(
            f"  memory, logits {row['logprob_chunk_tokens'] or 'all':>4} tokens at a time, response "
            f"{row['response_len']:5}: peak +{row['peak_growth_mb']:.0f} MB "
            f"(one fp32 [{row['responses']} x {row['response_len']} x vocab] copy: {row['vocab_copy_mb']:.0f} MB)"
        )
    result = {"date": time.strftime("%Y-%m-%d"), "cores": len(os.sched_getaffinity(0)), "table": table}
    result |= {"runs": runs, "learner_overhead": overhead, "options": vars(options)}
    (OUT_DIR / "step_time.json").write_text(json.dumps(result, indent=1))
    plot(table, OUT_DIR / "step_time.png")
    print(f"\nwrote {OUT_DIR / 'step_time.json'} and {OUT_DIR / 'step_time.png'}")


if __name__ == "__main__":
    main()
