"""What --sentinel does to clean runs and to collapsing ones.

    python benchmark/sentinel.py [--seeds 0 1 2] [--methods grpo cpgd] [--table FILE] [--replay_map [--map FILE]]

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
3. `--replay_map`: the stability map's runs (docs/stability_map.json, benchmark/stability_map.py: every group
   method x lr x updates per rollout x seed, without --sentinel) replayed offline through the sentinel's
   detector at its default k and window, running nothing: the runs it would have stopped at the default
   trust region, at which step, on which signal, beside the step the run's reward collapsed; then, per
   trust region, the collapses caught, late and missed, and the alarms in runs without a collapse (false
   in a run that learned, +0.5 held-out or more; doubtful in one that learned less). The map
   keeps each series rounded to 4 decimals and not the skipped-update count, so the replay sees a little
   less than the loop does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stability import AGGRESSIVE, METHODS, OUT_DIR, demo_task, train_run  # this script's folder is on sys.path
from stability_map import MAP_JSON, collapsed, load

from oat_cpgd.arg_checks import SYNC_CHECK_TOLERANCE
from oat_cpgd.args import Args
from oat_cpgd.sentinel import REWARD, SIGNALS, Sentinel

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


MAP_SERIES = {signal.key: signal.key.split("/")[1] for signal in SIGNALS} | {REWARD.key: "reward"}
"""Each watched metric -> the map's name for its series."""


def first_alarm(run: dict, max_drift: float) -> dict | None:
    """The first alarm the sentinel, at its default k and window and the trust region `max_drift`, raises on a
    map run's recorded series (a fp32 run: the KL floor of fp32's sync check tolerance)."""
    kl_floor = SYNC_CHECK_TOLERANCE["fp32"] ** 2 / 2
    sentinel = Sentinel(Args.sentinel_k, Args.sentinel_window, kl_floor, max_drift)
    for index in range(len(run["reward"])):
        metrics = {key: run[name][index] for key, name in MAP_SERIES.items()}
        if alarm := sentinel.check(index + 1, metrics):
            return {"step": alarm.step, "signal": alarm.signal, "value": alarm.value}
    return None


def verdict(run: dict, alarm: dict | None) -> str:
    """caught (at or before the reward's collapse, or in a run that crashed), late, missed; in a run without
    a collapse: quiet, false (an alarm in a run that learned: +0.5 held-out or more) or doubtful (an alarm in
    a run that learned less: it may be right)."""
    if collapsed(run):
        collapse = run["collapse_step"]["reward"] or len(run["reward"]) + 1  # a crash: after its last step
        return "missed" if alarm is None else "caught" if alarm["step"] <= collapse else "late"
    if alarm is None:
        return "quiet"
    return "false" if run["accuracy_after"] >= run["accuracy_before"] + 0.5 else "doubtful"


VERDICTS = ("caught", "late", "missed", "quiet", "false", "doubtful")


def replay_map(path: Path, trust_regions: list[float]) -> None:
    """Part 3: the map's runs through the detector, at each trust region (see the module's doc)."""
    runs = sorted(load(path).values(), key=lambda r: (r["method"], r["lr"], r["updates"], r["seed"]))
    alarms = {
        max_drift: [first_alarm(run, max_drift) for run in runs]
        for max_drift in {*trust_regions, Args.sentinel_max_drift}
    }
    print(
        f"\nthe sentinel's detector (k {Args.sentinel_k:g}, window {Args.sentinel_window}) on the {len(runs)} "
        f"runs of {path.name}; a run's collapse: its reward's, or a crash. Runs it fires on, at the default "
        f"trust region {Args.sentinel_max_drift:g}, and runs that collapsed:\n"
        "method | lr | updates | seed | held-out after | reward collapse at | first alarm (step: signal, value)"
    )
    for run, alarm in zip(runs, alarms[Args.sentinel_max_drift], strict=True):
        if alarm or collapsed(run):
            text = "-" if alarm is None else f"{alarm['step']}: {alarm['signal']} {alarm['value']:.3g}"
            collapse = run["collapse_step"]["reward"] or ("crashed" if run["crashed"] else "-")
            print(
                f"{run['method']} | {run['lr']:g} | {run['updates']} | {run['seed']} | "
                f"{run['accuracy_after']:.2f} | {collapse} | {text}"
            )
    seeds = sorted({r["seed"] for r in runs})
    print(f"\ntrust region | {' | '.join(VERDICTS)}  (runs: all (seed {' / seed '.join(map(str, seeds))}))")
    for max_drift in trust_regions:
        counts = {v: dict.fromkeys(seeds, 0) for v in VERDICTS}
        for run, alarm in zip(runs, alarms[max_drift], strict=True):
            counts[verdict(run, alarm)][run["seed"]] += 1
        cells = (f"{sum(c.values())} ({'/'.join(map(str, c.values()))})" for c in counts.values())
        print(f"{max_drift:g} | " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["grpo", "cpgd"], choices=list(METHODS))
    parser.add_argument("--table", type=Path, help="reprint the table of a saved sentinel.json instead of running")
    parser.add_argument("--replay_map", action="store_true", help="replay the stability map's runs, running nothing")
    parser.add_argument("--map", type=Path, default=MAP_JSON, help="the map's JSON that --replay_map reads")
    parser.add_argument(
        "--trust_regions",
        type=float,
        nargs="+",
        default=[0.1, 0.2, 0.3, 0.5, 1.0, 0.0],
        help="--sentinel_max_drift values the replay compares (0: none)",
    )
    options = parser.parse_args()
    if options.replay_map:
        replay_map(options.map, options.trust_regions)
        return
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
