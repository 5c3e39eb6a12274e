"""CPGD's stability claim in miniature: unclipped GRPO, clipped GRPO and CPGD under aggressive off-policy updates.

    python benchmark/stability.py [--seeds 0 1 2] [--steps 15] [--methods grpo_noclip grpo cpgd]

The paper (arXiv 2505.12504, Fig. 1) reports that policy-ratio methods without a clip collapse
under off-policy updates while CPGD stays stable. Here every method trains the demo's warm start
(`make demo`: the tiny model fine-tuned on "What is 47 + 5?" answers, 3 in 10 boxed) on the
demo's training questions through the real loop, with the same aggressive settings:
4 epochs x 4 mini-batches per rollout (16 optimizer steps on each rollout, all but the first
off-policy) at lr 1e-3, ten times the demo's. The methods:
- grpo_noclip: GRPO's loss with the ratio clip opened to [1e-6, 1e9], i.e. none (importance-weighted PG);
- grpo: GRPO with its clip, 0.2;
- cpgd: CPGD with run_cpgd's defaults (clipped log-ratio, policy drift 0.01, std weighting).
Each method runs on every seed. Greedy held-out accuracy on the demo's 200 held-out questions is
measured at step 0 and at the end.

The table, one value per seed: held-out accuracy after; the training reward's peak and its
min/max after the peak; the last token entropy; the first step of a reward collapse (down to
REWARD_COLLAPSE of the peak), an entropy collapse (below ENTROPY_FLOOR) and a response-length
collapse (mean below LENGTH_FLOOR, or every answer running to the limit); the largest policy
drift (k3 KL to the rollout's policy). One PNG overlays every run's reward and entropy. Writes
.cache/bench/stability.json and .png; `--table FILE` reprints a saved run's table.
Whatever it shows is what docs/RESULTS.md quotes: the setup is not tuned until CPGD wins.
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
from math import nan
from pathlib import Path

from oat_cpgd.experiment.demo import cpgd_flags, split_questions, warm_start, write_splits

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / ".cache" / "bench"
ENTROPY_FLOOR = 0.05
"""Nats per response token: below it, sampling is nearly greedy (exploration has collapsed)."""
LENGTH_FLOOR = 2.0
"""Tokens per response: below it, the answers are empty or a lone token."""
MAX_LENGTH = 12
"""The demo's --generate_max_length: a mean length there means every answer runs on to the limit."""
REWARD_COLLAPSE = 0.1
"""The reward has collapsed when, after its peak, it falls to this share of the peak or below."""
SIGNALS = ("grad_norm", "logprob_gap_actor_learner", "is_weight_max")
"""Further per-step series a run keeps: what the sentinel (oat_cpgd.sentinel) watches besides the above."""
METHODS = {
    "grpo_noclip": ("run_grpo", ["--critic_type=grpo", "--clip_low=0.999999", "--clip_high=1e9"]),
    "grpo": ("run_grpo", ["--critic_type=grpo"]),
    "rloo": ("run_grpo", ["--critic_type=rloo"]),
    "reinforce_pp": ("run_grpo", ["--critic_type=reinforce_pp_baseline"]),
    "gspo": ("run_grpo", ["--critic_type=gspo"]),
    "cispo": ("run_grpo", ["--critic_type=cispo"]),
    "gmpo": ("run_grpo", ["--critic_type=gmpo"]),
    "cpgd": ("run_cpgd", []),
}
"""Every group method of the registry, each with its own defaults, and grpo_noclip: name -> (entry point, flags).
This benchmark runs three by default (COMPARED); benchmark/stability_map.py runs them all."""
COMPARED = ["grpo_noclip", "grpo", "cpgd"]
COLOURS = dict(zip(METHODS, ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                             "tab:olive", "tab:blue"), strict=True))  # fmt: skip
AGGRESSIVE = [
    "--num_ppo_epochs=4",
    "--train_batch_size=32",  # 16 prompts x 8 samples = 128 responses: 4 mini-batches per epoch
    "--train_batch_size_per_device=32",
    "--learning_rate=1e-3",
    "--max_step_adjustment=1",
]


def demo_task(out: Path, fresh: bool) -> tuple[Path, Path, Path]:
    """The demo's warm start (built once, then cached) and its folder of training and held-out questions, and
    `out`, the benchmark's folder for its runs (emptied of an earlier run's when `fresh`)."""
    os.environ.setdefault("RAY_TMPDIR", str(REPO / ".cache" / "ray"))
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    train, held_out = split_questions()
    data = write_splits(REPO / ".cache" / "demo" / "data", train, held_out)
    return warm_start(train), data, out


def run_one(method: str, seed: int, steps: int, model: Path, data: Path, out: Path) -> dict:
    module, flags = METHODS[method]
    return {"method": method, "seed": seed} | train_run(
        f"{method}-seed{seed}", module, AGGRESSIVE + flags, seed, steps, model, data, out
    )


def train_run(
    name: str, module: str, flags: list[str], seed: int, steps: int, model: Path, data: Path, out: Path
) -> dict:
    """One run of `oat_cpgd.experiment.<module>` with the demo's flags and then `flags`, held-out accuracy at
    step 0 and at the end; its wall time, the accuracies and the per-step series the collapse tests read."""
    command = [sys.executable, "-m", f"oat_cpgd.experiment.{module}"]
    command += cpgd_flags(model, data, seed, steps, out) + flags
    command += [f"--eval_steps={steps}", f"--wb_run_name={name}"]  # held-out accuracy at step 0 and at the end
    start = time.perf_counter()
    # A run that fails (a non-finite update, say) is a result too: kept with the steps it logged.
    crashed = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL).returncode != 0
    metrics = out / name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    evals = [(row["step"], row["eval/test/accuracy"]) for row in rows if "eval/test/accuracy" in row]
    return {
        "crashed": crashed,
        "wall": time.perf_counter() - start,
        "accuracy_before": evals[0][1] if evals else float("nan"),
        "accuracy_after": evals[-1][1] if len(evals) > 1 else float("nan"),
        "reward": [row["actor/reward_mean"] for row in rows if "actor/reward_mean" in row],
        "entropy": [row["train/entropy"] for row in rows if "train/entropy" in row],
        "response_len": [row["train/response_len"] for row in rows if "train/response_len" in row],
        "policy_drift": [row["train/policy_drift"] for row in rows if "train/policy_drift" in row],
        "clip_frac": [row["train/clip_frac"] for row in rows if "train/clip_frac" in row],
        **{name: [row.get(f"train/{name}", nan) for row in rows if "actor/reward_mean" in row] for name in SIGNALS},
    }


def collapses(run: dict) -> dict[str, int | None]:
    """The first step (1-based) of each kind of collapse, or None: the reward falling to
    REWARD_COLLAPSE of its peak after it; the entropy below ENTROPY_FLOOR; the mean response
    length below LENGTH_FLOOR or at MAX_LENGTH (every answer rambling to the limit)."""
    reward, peak = run["reward"], max(range(len(run["reward"])), key=run["reward"].__getitem__)

    def first(condition) -> int | None:
        return next((step for step, hit in enumerate(condition, start=1) if hit), None)

    return {  # a reward that never rose cannot collapse
        "reward": first(
            0 < reward[peak] and i > peak and r <= REWARD_COLLAPSE * reward[peak] for i, r in enumerate(reward)
        ),
        "entropy": first(e < ENTROPY_FLOOR for e in run["entropy"]),
        "length": first(n < LENGTH_FLOOR or n >= MAX_LENGTH for n in run["response_len"]),
    }


def summary(runs: list[dict]) -> dict:
    peaks = [max(range(len(r["reward"])), key=r["reward"].__getitem__) for r in runs]
    return {
        "accuracy_before": statistics.mean(r["accuracy_before"] for r in runs),
        "accuracy_after": [r["accuracy_after"] for r in runs],
        "reward_peak": [r["reward"][p] for r, p in zip(runs, peaks, strict=True)],
        "reward_after_peak_min": [min(r["reward"][p + 1 :], default=nan) for r, p in zip(runs, peaks, strict=True)],
        "reward_after_peak_max": [max(r["reward"][p + 1 :], default=nan) for r, p in zip(runs, peaks, strict=True)],
        "reward_last": [r["reward"][-1] for r in runs],
        "entropy_last": [r["entropy"][-1] for r in runs],
        "collapse_step": [collapses(r) for r in runs],
        "policy_drift_max": [max(r["policy_drift"]) for r in runs],
        "crashed": [r.get("crashed", False) for r in runs],
    }


def plot(runs: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    reward_axes, entropy_axes = figure.subplots(1, 2)
    for run in runs:
        label = run["method"] if run["seed"] == runs[0]["seed"] else None
        steps = range(1, len(run["reward"]) + 1)
        reward_axes.plot(steps, run["reward"], color=COLOURS[run["method"]], label=label, alpha=0.8)
        entropy_axes.plot(steps, run["entropy"], color=COLOURS[run["method"]], label=label, alpha=0.8)
    reward_axes.set(title="training reward", xlabel="step")
    entropy_axes.set(title="token entropy (nats)", xlabel="step", yscale="log")
    entropy_axes.axhline(ENTROPY_FLOOR, color="grey", linestyle=":")
    reward_axes.legend()
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def fraction(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def steps_text(values: list[int | None]) -> str:
    return " ".join("-" if v is None else str(v) for v in values)


def print_table(runs: list[dict], methods: list[str], steps: int, seeds: list[int]) -> dict:
    """Each method's summary over its seeds (printed; returned for the JSON)."""
    table = {method: summary([r for r in runs if r["method"] == method]) for method in methods}
    print(
        f"\n{steps} steps, 16 prompts x 8 samples, 4 epochs x 4 mini-batches per rollout, lr 1e-3; seeds {seeds}.\n"
        f"Collapse, first step of: reward <= {REWARD_COLLAPSE:.0%} of its peak after it; entropy < "
        f"{ENTROPY_FLOOR} nats; mean length < {LENGTH_FLOOR} or = {MAX_LENGTH} tokens ('-': none). One value per seed."
    )
    columns = ("held-out before", "held-out after", "reward peak", "min after peak", "max after peak")
    columns += ("entropy last", "reward collapse", "entropy collapse", "length collapse", "max drift", "crashed")
    print("method       | " + " | ".join(columns))
    for method, row in table.items():
        kinds = {kind: [c[kind] for c in row["collapse_step"]] for kind in ("reward", "entropy", "length")}
        cells = [f"{row['accuracy_before']:.2f}", fraction(row["accuracy_after"]), fraction(row["reward_peak"])]
        cells += [fraction(row["reward_after_peak_min"]), fraction(row["reward_after_peak_max"])]
        cells += [fraction(row["entropy_last"]), *(steps_text(kinds[k]) for k in kinds)]
        cells += [fraction(row["policy_drift_max"]), " ".join("yes" if c else "no" for c in row["crashed"])]
        print(f"{method:12} | " + " | ".join(cells))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=COMPARED, choices=list(METHODS))
    parser.add_argument("--table", type=Path, help="reprint the table of a saved stability.json instead of running")
    options = parser.parse_args()
    if options.table:
        saved = json.loads(options.table.read_text())
        print_table(saved["runs"], saved["options"]["methods"], saved["options"]["steps"], saved["options"]["seeds"])
        return
    model, data, out = demo_task(OUT_DIR / "stability", fresh=True)

    runs = []
    for seed in options.seeds:  # seeds outermost: each method's runs spread over the whole benchmark
        for method in options.methods:
            print(f"seed {seed}: {method}", flush=True)
            runs.append(run_one(method, seed, options.steps, model, data, out))
    table = print_table(runs, options.methods, options.steps, options.seeds)
    result = {"date": time.strftime("%Y-%m-%d"), "options": {**vars(options), "table": None}, "table": table}
    result |= {"runs": runs, "settings": AGGRESSIVE}
    (OUT_DIR / "stability.json").write_text(json.dumps(result, indent=1))
    plot(runs, OUT_DIR / "stability.png")
    print(f"\nwrote {OUT_DIR / 'stability.json'} and {OUT_DIR / 'stability.png'}")


if __name__ == "__main__":
    main()
