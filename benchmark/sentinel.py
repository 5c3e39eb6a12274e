"""What --sentinel does to clean runs and to collapsing ones.

    python benchmark/sentinel.py [--seeds 0 1 2] [--methods grpo cpgd] [--table FILE]

1. False alarms: the demo (`make demo`: CPGD, 40 steps, its warm start and flags) without and with
   --sentinel, on every seed. An alarm there is a false one: the demo's runs do not collapse (0% -> 78%
   held-out). The pair also shows what the rollback points cost in wall time.
2. Collapse: the stability benchmark's aggressive setting (benchmark/stability.py: 16 updates per rollout
   at lr 1e-3, 15 steps) for `grpo` and `cpgd`, on every seed, without and with --sentinel (its defaults:
   remedy both, the LR halved and the rolled-back steps' prompts skipped, at most 3 rollbacks).
The table: per run, the held-out accuracy at the end, the rollbacks, the steps they undid (the sentinel's
cost in steps: each rollback redoes the steps from its rollback point to its alarm), the alarms, and
whether the run stopped (the sentinel gives up after
--max_rollbacks). Writes .cache/bench/sentinel.json; `--table FILE` reprints a saved one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stability import AGGRESSIVE, METHODS, OUT_DIR, demo_task, train_run  # this script's folder is on sys.path

DEMO_STEPS, AGGRESSIVE_STEPS = 40, 15


def run_one(case: str, method: str, seed: int, sentinel: bool, model: Path, data: Path, out: Path) -> dict:
    module, flags = METHODS[method]
    flags = (AGGRESSIVE if case == "aggressive" else []) + flags + ["--sentinel"] * sentinel
    name = f"{case}-{method}-seed{seed}-{'sentinel' if sentinel else 'plain'}"
    steps = AGGRESSIVE_STEPS if case == "aggressive" else DEMO_STEPS
    run = train_run(name, module, flags, seed, steps, model, data, out)
    alarms_file = out / name / "sentinel.jsonl"
    alarms = [json.loads(line) for line in alarms_file.read_text().splitlines()] if alarms_file.exists() else []
    rolled_back = [a for a in alarms if not a["stopped"]]  # the alarm that stopped a run was not rolled back
    return {
        "case": case,
        "method": method,
        "seed": seed,
        "sentinel": sentinel,
        "crashed": run["crashed"],
        "wall": run["wall"],
        "accuracy_before": run["accuracy_before"],
        "accuracy_after": run["accuracy_after"],
        "steps_done": len(run["reward"]),
        "rollbacks": len(rolled_back),
        "steps_undone": sum(a["step"] - a["back_to"] for a in rolled_back),
        "alarms": [{k: a[k] for k in ("step", "signal", "key", "value", "median", "limit", "back_to")} for a in alarms],
        "reward": run["reward"],
    }


def print_table(runs: list[dict]) -> None:
    print(
        "\ncase        | method | seed | sentinel | held-out before -> after | steps done | rollbacks | "
        "steps undone | alarms (step: signal, drift) | stopped | wall (s)"
    )
    for r in runs:
        alarms = ", ".join(f"{a['step']}: {a['signal']} {a['value']:.3g}" for a in r["alarms"]) or "-"
        after = "-" if r["accuracy_after"] != r["accuracy_after"] else f"{r['accuracy_after']:.2f}"  # NaN: stopped
        print(
            f"{r['case']:11} | {r['method']:6} | {r['seed']} | {'on' if r['sentinel'] else 'off':3} | "
            f"{r['accuracy_before']:.2f} -> {after} | {r['steps_done']} | {r['rollbacks']} | "
            f"{r['steps_undone']} | {alarms} | {'yes' if r['crashed'] else 'no'} | {r['wall']:.0f}"
        )
    clean = [r for r in runs if r["case"] == "demo" and r["sentinel"]]
    if clean:
        steps = sum(r["steps_done"] for r in clean)
        alarms = sum(r["rollbacks"] for r in clean)
        print(f"\nfalse alarms on the clean demo runs: {alarms} in {steps} steps ({len(clean)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["grpo", "cpgd"], choices=list(METHODS))
    parser.add_argument("--table", type=Path, help="reprint the table of a saved sentinel.json instead of running")
    options = parser.parse_args()
    if options.table:
        print_table(json.loads(options.table.read_text())["runs"])
        return
    model, data, out = demo_task(OUT_DIR / "sentinel", fresh=True)
    jobs = [("demo", "cpgd", seed, sentinel) for seed in options.seeds for sentinel in (False, True)]
    jobs += [
        ("aggressive", method, seed, sentinel)
        for seed in options.seeds
        for method in options.methods
        for sentinel in (False, True)
    ]
    runs = []
    for case, method, seed, sentinel in jobs:
        print(f"{case} {method} seed {seed}, sentinel {'on' if sentinel else 'off'}", flush=True)
        runs.append(run_one(case, method, seed, sentinel, model, data, out))
    print_table(runs)
    result = {"date": time.strftime("%Y-%m-%d"), "options": {**vars(options), "table": None}, "runs": runs}
    (OUT_DIR / "sentinel.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {OUT_DIR / 'sentinel.json'}")


if __name__ == "__main__":
    main()
